"""Command-line arguments shared by the training scripts (diffusers' flag names), and their checks.

Each ``add_*`` function adds one group to an ``argparse`` parser; :func:`check_common_args` raises a
``ValueError`` naming the flag for anything that would fail later, so a bad command stops before
any data or model is loaded.
"""

from __future__ import annotations

import argparse
import os

from .precision import PRECISIONS

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


def add_data_args(parser: argparse.ArgumentParser, default_resolution: int = 32) -> None:
    g = parser.add_argument_group("data")
    g.add_argument(
        "--dataset_name",
        type=str,
        default=None,
        help="A Hub dataset id, a folder written by datasets' save_to_disk, or a parquet file/folder.",
    )
    g.add_argument(
        "--dataset_config_name", type=str, default=None, help="The dataset's config name, if it has several."
    )
    g.add_argument(
        "--train_data_dir",
        type=str,
        default=None,
        help="An imagefolder (images + metadata.jsonl with the caption column) instead of --dataset_name.",
    )
    g.add_argument("--image_column", type=str, default="image", help="Column holding the images.")
    g.add_argument("--caption_column", type=str, default="text", help="Column holding the captions.")
    g.add_argument("--train_split", type=str, default="train", help="Split to train on.")
    g.add_argument("--validation_split", type=str, default="validation", help="Split for validation FID.")
    g.add_argument(
        "--max_train_samples", type=int, default=None, help="Truncate the training split (debugging)."
    )
    g.add_argument(
        "--resolution", type=int, default=default_resolution, help="Image side in pixels (a power of two)."
    )
    g.add_argument("--train_batch_size", type=int, default=64, help="Batch size per process.")
    g.add_argument("--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes.")
    g.add_argument(
        "--cache_dir",
        type=str,
        default=None,
        help="Where datasets/models downloaded from the Hub are cached.",
    )


def add_run_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("run")
    g.add_argument(
        "--output_dir", type=str, required=True, help="Checkpoints, logs and the final model go here."
    )
    g.add_argument("--seed", type=int, default=0, help="Seed of every random choice of the run.")
    g.add_argument("--max_train_steps", type=int, default=20000, help="Optimizer steps to train for.")
    g.add_argument(
        "--max_train_seconds",
        type=float,
        default=None,
        help="Also stop (checkpoint, save the model) once this much training time has passed in this launch.",
    )
    g.add_argument(
        "--train_time_clock",
        type=str,
        default="wall",
        choices=("wall", "cpu"),
        help="Clock of --max_train_seconds: wall time, or this process's CPU time (fair budgets on a shared machine).",
    )
    g.add_argument(
        "--gradient_accumulation_steps",
        type=int,
        default=1,
        help="Micro-batches accumulated per optimizer step (of each network).",
    )
    g.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=PRECISIONS,
        help="no | fp16 (autocast + loss scaling) | bf16 (autocast). Default: accelerate's config.",
    )
    g.add_argument(
        "--checkpointing_steps", type=int, default=500, help="Save a resumable checkpoint every N steps."
    )
    g.add_argument(
        "--checkpoints_total_limit", type=int, default=None, help="Keep at most this many checkpoints."
    )
    g.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help="'latest' (newest complete checkpoint in --output_dir, if any) or a checkpoint folder.",
    )
    g.add_argument(
        "--max_nonfinite_steps",
        type=int,
        default=20,
        help="Stop after this many consecutive steps with a non-finite loss or gradient.",
    )
    g.add_argument("--max_grad_norm", type=float, default=None, help="Clip gradient norms (off by default).")
    g.add_argument("--report_to", type=str, default="tensorboard", help="'tensorboard', 'all' or 'none'.")
    g.add_argument(
        "--logging_dir", type=str, default="logs", help="TensorBoard folder, relative to --output_dir."
    )
    g.add_argument(
        "--ddp_timeout",
        type=float,
        default=1800,
        help="Seconds a process waits in a collective (DDP gradient sync, barrier) before it fails with "
        "an error instead of hanging, e.g. when another process died or stalled.",
    )


def accelerator_from_args(args: argparse.Namespace):
    """The run's ``Accelerator``: trackers and logging folder from the run flags, ``--ddp_timeout`` on
    every collective, and DDP over gloo when ``accelerate launch`` starts several processes without CUDA.

    ``mixed_precision`` stays ``no``: autocast and loss scaling are :class:`~.precision.MixedPrecision`'s
    on every device."""
    from datetime import timedelta

    import torch
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration

    output_dir = os.fspath(args.output_dir)
    return Accelerator(
        mixed_precision="no",
        cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        log_with=None if args.report_to in (None, "none") else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=output_dir, logging_dir=os.path.join(output_dir, args.logging_dir)
        ),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=args.ddp_timeout))],
    )


def add_optimizer_args(parser: argparse.ArgumentParser, learning_rate: float = 2e-4) -> None:
    g = parser.add_argument_group("optimizer")
    g.add_argument("--learning_rate", type=float, default=learning_rate, help="Adam learning rate.")
    g.add_argument("--adam_beta1", type=float, default=0.5)
    g.add_argument("--adam_beta2", type=float, default=0.9)
    g.add_argument("--adam_weight_decay", type=float, default=0.0)
    g.add_argument("--adam_epsilon", type=float, default=1e-8)
    g.add_argument("--lr_scheduler", type=str, default="constant", choices=LR_SCHEDULERS)
    g.add_argument("--lr_warmup_steps", type=int, default=0)


def add_hub_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("hub")
    g.add_argument(
        "--push_to_hub", action="store_true", help="Upload the final model to the Hugging Face Hub."
    )
    g.add_argument(
        "--hub_model_id", type=str, default=None, help="Repository id, e.g. 'user/prodimg-fashion-32'."
    )
    g.add_argument(
        "--hub_token", type=str, default=None, help="Token (default: the one `hf auth login` stored)."
    )
    g.add_argument("--hub_private_repo", action="store_true", help="Create the repository as private.")


def resolve_mixed_precision(value: str | None) -> str:
    """The flag, else accelerate's launcher/config value (``ACCELERATE_MIXED_PRECISION``), else ``no``."""
    value = value or os.environ.get("ACCELERATE_MIXED_PRECISION") or "no"
    if value not in PRECISIONS:
        raise ValueError(f"--mixed_precision must be one of {PRECISIONS}, got {value!r}")
    return value


def check_common_args(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` for inconsistent or out-of-range values (before anything is loaded)."""
    if args.dataset_name is None and args.train_data_dir is None:
        raise ValueError("pass --dataset_name or --train_data_dir")
    if args.dataset_name is not None and args.train_data_dir is not None:
        raise ValueError("pass only one of --dataset_name and --train_data_dir")
    if args.train_data_dir is not None and not os.path.isdir(args.train_data_dir):
        raise FileNotFoundError(f"--train_data_dir {args.train_data_dir!r} is not a folder")
    r = args.resolution
    if r < 8 or r & (r - 1):
        raise ValueError(f"--resolution must be a power of two >= 8, got {r}")
    positive = [
        "train_batch_size",
        "max_train_steps",
        "gradient_accumulation_steps",
        "checkpointing_steps",
        "max_nonfinite_steps",
        "learning_rate",
    ]
    for name in positive:
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be > 0, got {getattr(args, name)}")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        raise ValueError(f"--checkpoints_total_limit must be >= 1, got {args.checkpoints_total_limit}")
    if args.dataloader_num_workers < 0:
        raise ValueError(f"--dataloader_num_workers must be >= 0, got {args.dataloader_num_workers}")
    if args.max_train_samples is not None and args.max_train_samples < 1:
        raise ValueError(f"--max_train_samples must be >= 1, got {args.max_train_samples}")
    if not args.ddp_timeout > 0:
        raise ValueError(f"--ddp_timeout must be > 0 seconds, got {args.ddp_timeout}")
    if args.max_train_seconds is not None and not args.max_train_seconds > 0:
        raise ValueError(f"--max_train_seconds must be > 0, got {args.max_train_seconds}")
    if args.max_grad_norm is not None and args.max_grad_norm <= 0:
        raise ValueError(f"--max_grad_norm must be > 0, got {args.max_grad_norm}")
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. 'user/prodimg-fashion-32')")
    if args.lr_warmup_steps < 0:
        raise ValueError(f"--lr_warmup_steps must be >= 0, got {args.lr_warmup_steps}")
    args.mixed_precision = resolve_mixed_precision(args.mixed_precision)
