"""``prodimg generate``: write product images for a prompt as PNG files, or a whole catalogue.

One prompt (``prodimg generate "red striped dress" -n 4``) writes ``<slug>-seed<N>.png`` files.
``--prompts FILE --out DIR`` generates a catalogue with :mod:`prodimg.catalog_generation`
(imagefolder output, resumable, ``accelerate launch`` aware). ``--backend onnxruntime`` runs an
export made by ``prodimg export onnx`` through the same pipeline class.
"""

from __future__ import annotations

import argparse
import io
import re
from pathlib import Path

from ..backends import BACKENDS, DTYPES, check_num_threads, load_pipeline

DEFAULT_PIPELINE_NAME = "prodimg-fashion-32"
BAD_ROW_ACTIONS = ("error", "skip")


def default_pipeline_dir() -> Path:
    """The shipped default: ``pipelines/prodimg-fashion-32`` of the source checkout, else of the CWD."""
    repo = Path(__file__).resolve().parents[2] / "pipelines" / DEFAULT_PIPELINE_NAME
    return repo if repo.is_dir() else Path.cwd() / "pipelines" / DEFAULT_PIPELINE_NAME


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate product images from a text description, or a catalogue from a file of prompts",
        description=(
            'One prompt: prodimg generate "red striped dress" -n 4 -o outputs. '
            "A catalogue: prodimg generate --prompts prompts.csv --out DIR writes DIR/images/*.png and "
            "DIR/metadata.jsonl (an imagefolder dataset), resumes where a previous run stopped, and runs "
            "under `accelerate launch --num_processes N -m prodimg.cli generate ...` with rows split "
            "between processes (docs/SCALING.md)."
        ),
    )
    p.add_argument("prompt", nargs="?", default=None, help='the product description, e.g. "red striped dress"')
    p.add_argument("--pipeline", default=None,
                   help=f"saved pipeline folder or Hub id (default: pipelines/{DEFAULT_PIPELINE_NAME}); "
                        "with --backend onnxruntime, a folder written by `prodimg export onnx`")
    p.add_argument("-n", "--num_images", "--num_images_per_prompt", dest="num_images", type=int, default=None,
                   help="images per prompt (default 4 for one prompt, 1 for --prompts)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed (default 0); one prompt: image i uses seed + i; --prompts: row r uses a seed "
                        "derived from (seed, r), recorded per image in metadata.jsonl")
    p.add_argument("--steps", "--num_inference_steps", dest="steps", type=int, default=None,
                   help="denoising steps (default: the pipeline's trained steps)")
    p.add_argument("--guidance_scale", type=float, default=1.0, help="classifier-free guidance (default 1.0: off)")
    p.add_argument("--negative_prompt", default=None)
    p.add_argument("-o", "--output_dir", "--out", dest="output_dir", default=None,
                   help="where to write images (default ./outputs for one prompt; required with --prompts)")
    p.add_argument("--device", default=None,
                   help="torch device (default: cpu for one prompt; this process's accelerate device for --prompts)")
    p.add_argument("--backend", choices=BACKENDS, default="pytorch",
                   help="pytorch (default) or onnxruntime (CPU; --pipeline is an ONNX export)")
    p.add_argument("--int8", action="store_true", help="onnxruntime backend: use the export's int8 generator")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="pytorch backend, one prompt: weights and compute dtype (default float32; bfloat16 is faster "
                        "on CPUs with native bf16). Catalogue mode stays float32")
    p.add_argument("--compile", action="store_true",
                   help="pytorch backend, one prompt: torch.compile the generator (the first call compiles, "
                        "seconds; pays off for many images). Catalogue mode stays eager")
    p.add_argument("--num_threads", type=int, default=None,
                   help="intra-op CPU threads per process (default: torch's choice for one prompt; 1 for --prompts, "
                        "so that output bytes do not depend on the number of processes: scale out with processes)")
    catalog = p.add_argument_group("catalogue mode (--prompts)")
    catalog.add_argument("--prompts", default=None,
                         help="a .csv (with header) or .jsonl file of prompts, or a dataset (save_to_disk folder, "
                              "parquet, or Hub id)")
    catalog.add_argument("--prompt_column", default="text", help="column holding the prompt (default: text)")
    catalog.add_argument("--split", default="train", help="dataset split (default: train)")
    catalog.add_argument("--batch_size", type=int, default=16,
                         help="rows per pipeline call (default 16); part of what fixes the output bytes")
    catalog.add_argument("--on_bad_row", choices=BAD_ROW_ACTIONS, default="error",
                         help="empty, missing or too long prompts: stop before generating (error, default) or skip them")
    catalog.add_argument("--overwrite", action="store_true",
                         help="regenerate images that --out already holds with other settings (default: refuse)")
    catalog.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def resolve_pipeline_path(pipeline: str | None) -> str:
    pipeline_path = pipeline or str(default_pipeline_dir())
    if pipeline is None and not Path(pipeline_path).is_dir():
        raise FileNotFoundError(
            f"the default pipeline {pipeline_path} is missing; pass --pipeline DIR with a saved pipeline folder"
        )
    return pipeline_path


def slugify(text: str, max_len: int = 48) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "image"


def run(args: argparse.Namespace) -> int:
    if args.prompts is not None and args.prompt is not None:
        raise ValueError("pass either a PROMPT or --prompts FILE, not both")
    if args.prompts is None and args.prompt is None:
        raise ValueError('pass a PROMPT (e.g. prodimg generate "red striped dress") or --prompts FILE --out DIR')
    check_num_threads(args.num_threads)  # before torch.set_num_threads: a huge count exhausts memory
    if args.int8 and args.backend != "onnxruntime":
        raise ValueError("--int8 needs --backend onnxruntime")
    if args.prompts is not None:
        if args.dtype != "float32" or args.compile:
            flag = "--compile" if args.compile else "--dtype"
            raise ValueError(f"{flag} applies to one PROMPT; catalogue mode (--prompts) runs eagerly in float32 "
                             "so that its recorded images can be reproduced and resumed byte for byte")
        return run_catalog(args)
    return run_single(args)


def run_single(args: argparse.Namespace) -> int:
    import torch

    from ..utils import atomic_write_bytes

    num_images = 4 if args.num_images is None else args.num_images
    if num_images < 1:
        raise ValueError(f"--num_images must be >= 1, got {num_images}")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    device = args.device or "cpu"
    pipeline_path = resolve_pipeline_path(args.pipeline)
    pipe = load_pipeline(pipeline_path, args.backend, device, args.int8, args.num_threads, args.dtype,
                         compile=args.compile)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator(device).manual_seed(args.seed + i) for i in range(num_images)]
    images = pipe(
        args.prompt,
        negative_prompt=args.negative_prompt,
        num_images_per_prompt=num_images,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        generator=generators,
    ).images
    out_dir = Path(args.output_dir or "outputs")
    slug = slugify(args.prompt)
    for i, image in enumerate(images):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        path = out_dir / f"{slug}-seed{args.seed + i}.png"
        atomic_write_bytes(path, buf.getvalue())
        print(path)
    return 0


def run_catalog(args: argparse.Namespace) -> int:
    import torch
    from accelerate import PartialState

    from ..catalog_generation import generate_catalog

    if args.output_dir is None:
        raise ValueError("--prompts needs --out DIR (the catalogue folder to write or resume)")
    num_images = 1 if args.num_images is None else args.num_images
    if num_images < 1:
        raise ValueError(f"--num_images_per_prompt must be >= 1, got {num_images}")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    num_threads = args.num_threads or 1
    torch.set_num_threads(num_threads)
    # On CPU the processes of `accelerate launch --multi_gpu` form a gloo group only with cpu=True.
    on_cpu = args.backend == "onnxruntime" or args.device == "cpu" or (args.device is None and not torch.cuda.is_available())
    state = PartialState(cpu=on_cpu)
    device = args.device or str(state.device)
    pipeline_path = resolve_pipeline_path(args.pipeline)
    pipe = load_pipeline(pipeline_path, args.backend, device, args.int8, num_threads)
    report = generate_catalog(
        pipe,
        args.prompts,
        args.output_dir,
        pipeline_name=pipeline_path,
        prompt_column=args.prompt_column,
        split=args.split,
        num_images_per_prompt=num_images,
        batch_size=args.batch_size,
        seed=args.seed,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        negative_prompt=args.negative_prompt,
        on_bad_row=args.on_bad_row,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        state=state,
    )
    if state.is_main_process:
        skipped = f", {len(report.bad_rows)} bad rows skipped" if report.bad_rows else ""
        print(
            f"{report.out_dir}: {report.metadata_records} images in metadata.jsonl; this run generated "
            f"{report.valid_rows - report.already_done} of {report.valid_rows} valid rows "
            f"({report.already_done} already done{skipped}) in {report.elapsed_s:.1f} s "
            f"on {state.num_processes} process(es)"
        )
    return 0
