"""Adversarial training of a ProductImagePipeline's generator (the loop of ``train_scripts/train_product_gan.py``).

One training step (``--gradient_accumulation_steps`` micro-batches per network):

1. Conditioning: captions -> cached text embeddings (the text encoder is frozen); with probability
   ``--cond_drop_prob`` a sample's caption is replaced by the empty prompt (classifier-free guidance).
2. Discriminator: real pairs ``(x_t, x_{t+1}) = scheduler.sample_training_pair(x_0, t)`` and fake
   pairs ``(scheduler.sample_posterior(G(x_{t+1}, t, z, text), x_{t+1}, t), x_{t+1})`` go through
   DiffAugment (same augmentation for both images of a pair) and one D forward. Loss: softplus
   (non-saturating) on real/fake + ``--matching_loss_weight`` x softplus(D(real image, wrong caption))
   using ``ProductDiscriminator.text_logits`` on the real features (no second forward) + lazy R1 on
   real pairs every ``--r1_interval`` steps (gradient with respect to the less noisy real image ``x_t``,
   before DiffAugment, as in DDGAN; scaled by the interval).
3. Generator: non-saturating loss on fresh fake pairs through the (frozen-for-this-phase) D, plus,
   with ``--clip_guidance_model``, ``--clip_guidance_weight`` x (1 - cos) between a frozen CLIP's
   embedding of the predicted ``x_0`` and the caption's (:mod:`prodimg.training.clip_guidance`; or, with
   ``--clip_guidance_objective contrastive``, CLIP's cross-entropy over the batch's captions), with
   ``--classifier_guidance_model``, ``--classifier_guidance_weight`` x a frozen attribute classifier's
   cross-entropy on the predicted ``x_0`` against its caption's labels
   (:mod:`prodimg.training.classifier_guidance`), and, with ``--anchor_weight``, that weight x MSE between
   the predicted ``x_0`` and the frozen starting generator's; with ``--diversity_weight``, that weight x
   how much less two draws of the generator's noise inputs (``x_{t+1}`` and ``z``) for the same caption and
   ``t`` differ than the starting generator's on the same draws (:func:`~prodimg.training.losses.diversity_floor_loss`;
   both draws go through one generator forward).
4. EMA of G after each generator step; each LR scheduler steps once per step of its network's phase.

A pretrained generator paired with a new discriminator (a pipeline saved without its discriminator,
such as the shipped default) is first met by a discriminator that cannot tell real from fake, and its
gradients wreck the generator within a hundred steps. ``--discriminator_warmup_steps`` (by default
:data:`DEFAULT_DISCRIMINATOR_WARMUP` in that case, else 0) trains only the discriminator for the first
steps, leaving the generator, its EMA and its optimizer untouched. On the shipped default this reduces
the damage but does not prevent it (docs/default-32-history.md has the figures): keep a pipeline's discriminator.
``--anchor_weight`` holds the generator's outputs near the pipeline's own while a new discriminator learns.
``--adversarial_weight 0`` goes without a discriminator: the generator learns from CLIP or classifier
guidance alone, held to its pipeline by the anchor, and no discriminator step runs. No discriminator is
built either (nor optimised, checkpointed or saved); only a pipeline's own, continued as usual when no
``--discriminator_config`` asks for a new one, is loaded and saved again as it was.

Every optimizer step goes through :func:`prodimg.training.precision.guarded_step` (fp16 loss
scaling, non-finite skip, consistent across processes). Mixed precision is handled by
:class:`MixedPrecision` (autocast, and a GradScaler for fp16) on every device, so the
``Accelerator`` itself runs with ``mixed_precision="no"``: accelerate would otherwise silently run
fp16 as fp32 on CPU.

:func:`train_product_gan` runs the same training from Python (keyword arguments named like the
flags) for recipes that build the default model.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..models import ProductDiscriminator, ProductGenerator
from ..models.presets import DISCRIMINATOR_PRESETS, GENERATOR_PRESETS, discriminator_preset, generator_preset
from ..schedulers import DDGANScheduler
from ..utils import atomic_directory, atomic_write_bytes, atomic_write_text
from .args import (
    accelerator_from_args,
    add_data_args,
    add_hub_args,
    add_optimizer_args,
    add_run_args,
    check_common_args,
)
from .augment import diff_augment, parse_policy
from .checkpointing import load_checkpoint, resolve_resume_checkpoint, save_checkpoint
from .classifier_guidance import ClassifierGuidance, format_heads, parse_heads
from .clip_guidance import OBJECTIVES, CLIPGuidance
from .hub import files_to_upload, push_folder_to_hub, render_pipeline_card, write_model_card
from .losses import (
    discriminator_loss,
    diversity_floor_loss,
    generator_loss,
    matching_loss,
    mismatched_captions,
    r1_penalty,
)
from .precision import MixedPrecision, NonFiniteGuard, NonFiniteTrainingError, StepResult, guarded_step
from .sampler import ResumableBatchSampler, endless_batches
from .state import (
    Deadline,
    PhaseHistory,
    TrainerState,
    capture_rng_state,
    restore_rng_state,
    summarize_phases,
)
from .tracking import Throughput, init_trackers, log_image, progress_bar, setup_logging
from .validation import EarlyStopping, FIDEvaluator, fid_unavailable_reason, generate_grid, to_uint8_nhwc

logger = logging.getLogger(__name__)

DEFAULT_VALIDATION_PROMPTS = [
    "red striped dress",
    "blue denim jacket",
    "black leather ankle boot",
    "white sneaker, product photo",
]
#: Discriminator-only steps when a pretrained generator meets a new discriminator (see the module docstring).
DEFAULT_DISCRIMINATOR_WARMUP = 200

# Test-only hook: global steps (1-based) whose discriminator loss is forced to NaN: "3", "2,3", "4-", "all".
NONFINITE_ENV = "PRODIMG_TEST_FORCE_NONFINITE"
SUMMARY_FILE = "training_summary.json"
BEST_GENERATOR_DIR = "best_ema_generator"


# ============================================================================================ arguments
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_product_gan.py",
        description="Train the generator of a ProductImagePipeline (text -> product image) as a denoising diffusion GAN.",
    )
    parser.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        required=True,
        help="A saved ProductImagePipeline (continue / fine-tune its generator) or a CLIP text "
        "encoder + tokenizer (folder or Hub id; fresh generator and discriminator).",
    )
    parser.add_argument(
        "--revision", type=str, default=None, help="Hub revision of --pretrained_model_name_or_path."
    )
    add_data_args(parser)
    add_run_args(parser)
    add_optimizer_args(parser)
    add_hub_args(parser)

    g = parser.add_argument_group("model")
    g.add_argument(
        "--generator_config",
        type=str,
        default="preset",
        help="'preset' (prodimg.models.presets for --resolution) or a JSON file of ProductGenerator "
        "arguments (merged over the preset when one exists). Fresh generators only.",
    )
    g.add_argument(
        "--discriminator_config",
        type=str,
        default="preset",
        help="'preset' or a JSON file of ProductDiscriminator arguments.",
    )
    g.add_argument(
        "--num_train_timesteps",
        type=int,
        default=None,
        help="Denoising steps T (1..8). Default: the pipeline's, or 4 for a fresh generator.",
    )

    g = parser.add_argument_group("GAN objective")
    g.add_argument(
        "--d_learning_rate",
        type=float,
        default=None,
        help="Discriminator learning rate (default: --learning_rate).",
    )
    g.add_argument(
        "--r1_gamma",
        type=float,
        default=0.05,
        help="R1 weight gamma (penalty gamma/2 * |grad|^2); 0 disables.",
    )
    g.add_argument("--r1_interval", type=int, default=16, help="Lazy R1: every N steps, scaled by N.")
    g.add_argument(
        "--diffaugment",
        type=str,
        default="color,translation,cutout",
        help="DiffAugment policy on D's inputs (comma list of color,translation,cutout; 'none').",
    )
    g.add_argument(
        "--matching_loss_weight",
        type=float,
        default=1.0,
        help="Weight of the matching-aware term (real image + wrong caption = fake); 0 disables.",
    )
    g.add_argument(
        "--adversarial_weight",
        type=float,
        default=1.0,
        help="Weight of the discriminator's (adversarial) term in the generator's loss. 0 fine-tunes without a "
        "discriminator: no discriminator steps at all, the generator learns from --clip_guidance_model and/or "
        "--classifier_guidance_model only, held near its starting pipeline by --anchor_weight (a guidance and "
        "the anchor are required then). No discriminator is built then; a pipeline's own (without "
        "--discriminator_config) is saved again as it was.",
    )
    g.add_argument(
        "--clip_guidance_model",
        type=str,
        default=None,
        help="A CLIP (folder, train_clip.py output or Hub id): adds its distance between each generated "
        "image and its caption (by this CLIP's own text tower) to the generator's loss.",
    )
    g.add_argument(
        "--clip_guidance_weight",
        type=float,
        default=0.5,
        help="Weight of the CLIP guidance term (with --clip_guidance_model).",
    )
    g.add_argument(
        "--clip_guidance_objective",
        choices=OBJECTIVES,
        default="cosine",
        help="cosine: 1 - cos(image, caption) (StyleGAN-T). contrastive: CLIP's own loss, the cross-entropy of "
        "the image's caption among the batch's distinct captions at the CLIP's temperature; its gradient is "
        "about logit_scale times larger, so take a smaller --clip_guidance_weight.",
    )
    g.add_argument(
        "--classifier_guidance_model",
        type=str,
        default=None,
        help="An attribute classifier folder (train_scripts/train_attribute_classifier.py): adds its "
        "cross-entropy on each generated image against the labels of its caption's training rows (the data's "
        "columns named like its heads) to the generator's loss. Not the one prodimg eval judges with.",
    )
    g.add_argument(
        "--classifier_guidance_weight",
        type=float,
        default=1.0,
        help="Weight of the classifier guidance term (with --classifier_guidance_model).",
    )
    g.add_argument(
        "--classifier_guidance_heads",
        type=str,
        default=None,
        help="Comma-separated heads of --classifier_guidance_model to guide with, each with an optional "
        "=WEIGHT that scales its cross-entropy (1 when left out), e.g. category,pattern=0.2 (default: all of "
        "them, weight 1). The term is --classifier_guidance_weight x the sum of the weighted heads.",
    )
    g.add_argument(
        "--anchor_weight",
        type=float,
        default=0.0,
        help="Fine-tuning a pipeline: add this weight x the mean squared difference between the generator's "
        "predicted x_0 and the starting generator's (frozen) on the same inputs, so a new discriminator's early "
        "gradients cannot drag it far from what it drew; 0 (default) disables.",
    )
    g.add_argument(
        "--diversity_weight",
        type=float,
        default=0.0,
        help="Fine-tuning a pipeline: add this weight x mean(relu(d_start - d)), where d is the mean absolute "
        "difference between the generator's predicted x_0 for two draws of its noise inputs (x_{t+1} and z) with "
        "the same caption and t, and d_start the starting generator's (frozen) on the same draws: a mode-seeking "
        "floor that penalises being less varied than the start, never more. Costs a second generator draw per "
        "sample; 0 (default) disables.",
    )
    g.add_argument(
        "--anchor_steps",
        type=int,
        default=None,
        help="With --anchor_weight: decay the weight linearly to 0 over this many generator steps (default: "
        "keep it for the whole run).",
    )
    g.add_argument(
        "--discriminator_warmup_steps",
        type=int,
        default=None,
        help="Train only the discriminator for the first N steps (counted in --max_train_steps; the generator's "
        "LR schedule, --lr_warmup_steps included, starts after them). Default: "
        f"{DEFAULT_DISCRIMINATOR_WARMUP} when a pretrained generator meets a new discriminator, else 0.",
    )
    g.add_argument(
        "--cond_drop_prob",
        type=float,
        default=0.1,
        help="Probability of training on the empty prompt instead of the caption (classifier-free guidance).",
    )
    g.add_argument("--ema_decay", type=float, default=0.999, help="EMA decay of the generator weights.")
    g.add_argument(
        "--ema_update_after_step", type=int, default=0, help="Start the EMA after this many steps."
    )
    g.add_argument("--random_flip", action="store_true", help="Randomly flip training images horizontally.")
    g.add_argument(
        "--embedding_cache_dir",
        type=str,
        default=None,
        help="Keep the prompt-embedding cache on disk here (shared by runs with the same text encoder).",
    )

    g = parser.add_argument_group("validation")
    g.add_argument("--validation_steps", type=int, default=500, help="Validate every N steps.")
    g.add_argument(
        "--validation_prompts",
        type=str,
        nargs="+",
        default=DEFAULT_VALIDATION_PROMPTS,
        help="Prompts of the validation image grid (one row each).",
    )
    g.add_argument("--num_validation_images", type=int, default=4, help="Images per validation prompt.")
    g.add_argument(
        "--validation_guidance_scale", type=float, default=1.0, help="Guidance scale for validation."
    )
    g.add_argument(
        "--validation_fid_num_images",
        type=int,
        default=1000,
        help="Images of --validation_split for a small FID at each validation (0 disables FID).",
    )
    g.add_argument(
        "--early_stopping_patience",
        type=int,
        default=None,
        help="Stop when the validation FID has not improved for N validations (the best EMA "
        "generator is kept and saved as the final model).",
    )
    g.add_argument("--tracker_project_name", type=str, default="train_product_gan")
    return parser


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """All argument checks that need no data or model; raises ValueError/FileNotFoundError."""
    check_common_args(args)
    if args.num_train_timesteps is not None and not 1 <= args.num_train_timesteps <= 8:
        raise ValueError(f"--num_train_timesteps must be in 1..8, got {args.num_train_timesteps}")
    if args.d_learning_rate is not None and args.d_learning_rate <= 0:
        raise ValueError(f"--d_learning_rate must be > 0, got {args.d_learning_rate}")
    if args.r1_gamma < 0:
        raise ValueError(f"--r1_gamma must be >= 0, got {args.r1_gamma}")
    if args.r1_interval < 1:
        raise ValueError(f"--r1_interval must be >= 1, got {args.r1_interval}")
    if args.matching_loss_weight < 0:
        raise ValueError(f"--matching_loss_weight must be >= 0, got {args.matching_loss_weight}")
    if args.clip_guidance_model is not None and not args.clip_guidance_weight > 0:
        raise ValueError(f"--clip_guidance_weight must be > 0, got {args.clip_guidance_weight}")
    if args.classifier_guidance_model is not None and not args.classifier_guidance_weight > 0:
        raise ValueError(f"--classifier_guidance_weight must be > 0, got {args.classifier_guidance_weight}")
    if args.classifier_guidance_heads is not None:
        try:
            parse_heads(args.classifier_guidance_heads)
        except ValueError as err:
            raise ValueError(f"--classifier_guidance_heads: {err}") from None
    classifier = args.classifier_guidance_model
    if classifier is not None and not Path(classifier, "config.json").is_file():
        raise FileNotFoundError(
            f"--classifier_guidance_model {classifier}: no attribute classifier there "
            "(a folder with config.json, from train_scripts/train_attribute_classifier.py)"
        )
    if args.classifier_guidance_heads is not None and args.classifier_guidance_model is None:
        raise ValueError("--classifier_guidance_heads needs --classifier_guidance_model")
    if args.anchor_weight < 0:
        raise ValueError(f"--anchor_weight must be >= 0, got {args.anchor_weight}")
    if not (args.diversity_weight >= 0 and math.isfinite(args.diversity_weight)):
        raise ValueError(f"--diversity_weight must be a finite number >= 0, got {args.diversity_weight}")
    if args.adversarial_weight < 0:
        raise ValueError(f"--adversarial_weight must be >= 0, got {args.adversarial_weight}")
    if args.adversarial_weight == 0:
        guided = args.clip_guidance_model is not None or args.classifier_guidance_model is not None
        if not guided or not args.anchor_weight > 0:
            raise ValueError(
                "--adversarial_weight 0 trains without a discriminator, so the generator needs "
                "--clip_guidance_model or --classifier_guidance_model (what to learn) and --anchor_weight > 0 "
                "(what holds it to its pipeline)"
            )
        if args.discriminator_warmup_steps:
            raise ValueError("--discriminator_warmup_steps has nothing to warm up with --adversarial_weight 0")
    if args.anchor_steps is not None and args.anchor_steps < 1:
        raise ValueError(f"--anchor_steps must be >= 1, got {args.anchor_steps}")
    if args.discriminator_warmup_steps is not None and args.discriminator_warmup_steps < 0:
        raise ValueError(f"--discriminator_warmup_steps must be >= 0, got {args.discriminator_warmup_steps}")
    if not 0 <= args.cond_drop_prob < 1:
        raise ValueError(f"--cond_drop_prob must be in [0, 1), got {args.cond_drop_prob}")
    if not 0 <= args.ema_decay <= 1:
        raise ValueError(f"--ema_decay must be in [0, 1], got {args.ema_decay}")
    if args.validation_steps <= 0:
        raise ValueError(f"--validation_steps must be > 0, got {args.validation_steps}")
    if args.num_validation_images < 0 or args.validation_fid_num_images < 0:
        raise ValueError("--num_validation_images and --validation_fid_num_images must be >= 0")
    if args.validation_fid_num_images == 1:
        raise ValueError("--validation_fid_num_images must be 0 (off) or >= 2")
    if args.early_stopping_patience is not None:
        if args.early_stopping_patience < 1:
            raise ValueError(f"--early_stopping_patience must be >= 1, got {args.early_stopping_patience}")
        if args.validation_fid_num_images == 0:
            raise ValueError(
                "--early_stopping_patience needs the validation FID (--validation_fid_num_images > 0)"
            )
    parse_policy(args.diffaugment)
    for name in ("generator_config", "discriminator_config"):
        value = getattr(args, name)
        if value != "preset" and not os.path.isfile(value):
            raise FileNotFoundError(f"--{name} {value!r} is neither 'preset' nor an existing JSON file")
    return args


def parse_args(input_args: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the flags; exits with a clear message (status 2) on a bad argument."""
    parser = build_parser()
    args = parser.parse_args(input_args)
    try:
        check_args(args)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    return args


# ============================================================================================ models
def _load_config_file(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--{what} {path!r} is not a readable JSON file ({err})") from None
    if not isinstance(cfg, dict):
        raise TypeError(f"--{what} {path!r} must hold a JSON object of constructor arguments")
    return {k: v for k, v in cfg.items() if not k.startswith("_")}  # a saved config.json works too


def model_config(spec: str, resolution: int, presets: dict, preset_fn, what: str, fixed: dict) -> dict:
    """Constructor arguments: the preset for ``resolution`` (if any) updated by the JSON file ``spec``;
    ``fixed`` values (resolution, text widths, T) are imposed and must not contradict the file."""
    if spec == "preset":
        if resolution not in presets:
            raise ValueError(
                f"no {what} preset for --resolution {resolution} (presets: {sorted(presets)}); "
                f"pass --{what}_config with a JSON file"
            )
        cfg = preset_fn(resolution)
    else:
        user = _load_config_file(spec, f"{what}_config")
        cfg = {**(preset_fn(resolution) if resolution in presets else {}), **user}
        for key, value in fixed.items():
            if key in user and user[key] != value:
                raise ValueError(
                    f"--{what}_config sets {key}={user[key]!r}, but this run needs {key}={value!r} "
                    "(from --resolution, the text encoder or --num_train_timesteps)"
                )
    cfg.update(fixed)
    return cfg


def _build(cls, cfg: dict, what: str):
    try:
        return cls(**cfg)
    except TypeError as err:
        raise ValueError(f"--{what}_config: {err}") from None


def _is_pipeline(path: str, revision: str | None, cache_dir: str | None) -> bool:
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, "model_index.json"))
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(path, "model_index.json", revision=revision, cache_dir=cache_dir)
        return True
    except Exception:  # noqa: BLE001 - not a pipeline repository (or unreachable): try a text encoder
        return False


@dataclasses.dataclass
class Components:
    tokenizer: Any
    text_encoder: Any
    generator: ProductGenerator
    discriminator: ProductDiscriminator | None  # None: --adversarial_weight 0 and none saved to keep
    scheduler: DDGANScheduler
    source: str  # "pipeline" or "text_encoder"
    discriminator_source: str  # "saved" (continued from the pipeline's folder), "new" or "none"


def _pooled_dim(text_encoder) -> int:
    cfg = text_encoder.config
    return int(cfg.projection_dim) if hasattr(text_encoder, "text_projection") else int(cfg.hidden_size)


def load_text_encoder(path: str, revision: str | None = None, cache_dir: str | None = None):
    """A frozen CLIP text encoder and its tokenizer from a folder (``text_encoder/`` + ``tokenizer/``
    subfolders, or a model folder) or a Hub id; safetensors only. Falls back to the bundled CLIP
    tokenizer when the location has none."""
    from transformers import AutoConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from ..text import load_clip_tokenizer

    local = os.path.isdir(path)
    sub = "text_encoder" if local and os.path.isdir(os.path.join(path, "text_encoder")) else ""
    kw = {"revision": revision, "cache_dir": cache_dir}
    try:
        config = AutoConfig.from_pretrained(path, subfolder=sub, **kw)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"--pretrained_model_name_or_path {path!r} is neither a saved ProductImagePipeline nor a CLIP text "
            f"encoder ({err})"
        ) from None
    arch = set(getattr(config, "architectures", None) or [])
    cls = CLIPTextModel if "CLIPTextModel" in arch else CLIPTextModelWithProjection
    text_encoder = cls.from_pretrained(path, subfolder=sub, use_safetensors=True, **kw)
    tok_sub = "tokenizer" if local and os.path.isdir(os.path.join(path, "tokenizer")) else ""
    try:
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder=tok_sub, **kw)
    except (OSError, ValueError, TypeError):
        logger.info(f"No tokenizer at {path}; using the bundled CLIP tokenizer")
        tokenizer = load_clip_tokenizer()
    return tokenizer, text_encoder


def load_components(args: argparse.Namespace) -> Components:
    """Tokenizer, frozen text encoder, generator, discriminator and scheduler for this run."""
    from ..pipeline import ProductImagePipeline

    path, kw = args.pretrained_model_name_or_path, {"revision": args.revision, "cache_dir": args.cache_dir}
    if _is_pipeline(path, args.revision, args.cache_dir):
        if args.generator_config != "preset":
            raise ValueError(
                "--generator_config applies to fresh generators; the generator comes from the pipeline "
                f"{path!r}"
            )
        pipe = ProductImagePipeline.from_pretrained(path, **kw)
        tokenizer, text_encoder, generator, scheduler = (
            pipe.tokenizer,
            pipe.text_encoder,
            pipe.generator,
            pipe.scheduler,
        )
        T = scheduler.config.num_train_timesteps
        if args.num_train_timesteps is not None and args.num_train_timesteps != T:
            raise ValueError(
                f"--num_train_timesteps {args.num_train_timesteps} differs from the pipeline's T={T}"
            )
        if generator.config.sample_size != args.resolution:
            raise ValueError(
                f"--resolution {args.resolution} differs from the pipeline generator's sample_size "
                f"{generator.config.sample_size}"
            )
        source = "pipeline"
        generator.train()
    else:
        tokenizer, text_encoder = load_text_encoder(path, **kw)
        T = args.num_train_timesteps or 4
        fixed = {
            "sample_size": args.resolution,
            "text_embed_dim": int(text_encoder.config.hidden_size),
            "pooled_text_dim": _pooled_dim(text_encoder),
            "num_train_timesteps": T,
        }
        cfg = model_config(
            args.generator_config, args.resolution, GENERATOR_PRESETS, generator_preset, "generator", fixed
        )
        generator = _build(ProductGenerator, cfg, "generator")
        scheduler = DDGANScheduler(num_train_timesteps=T)
        source = "text_encoder"
    fixed = {
        "sample_size": args.resolution,
        "pooled_text_dim": _pooled_dim(text_encoder),
        "num_train_timesteps": T,
    }
    saved_d = os.path.join(path, "discriminator")
    if (
        source == "pipeline"
        and args.discriminator_config == "preset"
        and os.path.isfile(os.path.join(saved_d, "config.json"))
    ):
        discriminator = ProductDiscriminator.from_pretrained(saved_d, use_safetensors=True)
        for key, value in fixed.items():
            if discriminator.config[key] != value:
                raise ValueError(
                    f"the saved discriminator in {saved_d} has {key}={discriminator.config[key]}, need {value}"
                )
        logger.info(f"Continuing with the discriminator saved in {saved_d}")
        d_source = "saved"
    elif args.adversarial_weight == 0:  # nothing would train it, and an untrained one is not saved
        if args.discriminator_config != "preset":
            logger.info("No discriminator: --adversarial_weight 0 builds none, so --discriminator_config is unused")
        discriminator, d_source = None, "none"
    else:
        cfg = model_config(
            args.discriminator_config,
            args.resolution,
            DISCRIMINATOR_PRESETS,
            discriminator_preset,
            "discriminator",
            fixed,
        )
        discriminator = _build(ProductDiscriminator, cfg, "discriminator")
        d_source = "new"
    text_encoder.requires_grad_(False)
    text_encoder.eval()
    if discriminator is not None:
        discriminator.train()
    return Components(tokenizer, text_encoder, generator, discriminator, scheduler, source, d_source)


def discriminator_warmup(args: argparse.Namespace, c: Components) -> int:
    """Steps that train only the discriminator: the flag, or by default
    :data:`DEFAULT_DISCRIMINATOR_WARMUP` when a pretrained generator meets a new discriminator."""
    if args.discriminator_warmup_steps is not None:
        return args.discriminator_warmup_steps
    if args.adversarial_weight == 0:  # no discriminator steps at all
        return 0
    return DEFAULT_DISCRIMINATOR_WARMUP if (c.source, c.discriminator_source) == ("pipeline", "new") else 0


# ============================================================================================ helpers
def _progress_postfix(logs: dict[str, float]) -> dict[str, str]:
    """The progress bar's losses: D's (when it trains), G's adversarial term, or the phase's name."""
    post = {}
    if "loss/d_real" in logs:
        post["d"] = f"{logs['loss/d_real'] + logs['loss/d_fake']:.3f}"
    if "loss/g" in logs:
        post["g"] = f"{logs['loss/g']:.3f}"
    elif "loss/g_clip" in logs or "loss/g_cls" in logs:
        for name, key in (("clip", "loss/g_clip"), ("cls", "loss/g_cls")):
            if key in logs:
                post[name] = f"{logs[key]:.3f}"
    else:
        post["g"] = "warm-up"
    return post


def _forced_nonfinite_steps() -> set[int] | str:
    value = os.environ.get(NONFINITE_ENV, "").strip()
    if not value:
        return set()
    if value == "all":
        return "all"
    if value.endswith("-"):
        return f">={int(value[:-1])}"
    return {int(v) for v in value.split(",") if v.strip()}


def _is_forced(step: int, spec) -> bool:
    if spec == "all":
        return True
    if isinstance(spec, str):
        return step >= int(spec[2:])
    return step in spec


def parameter_digest(*modules_or_tensors) -> str:
    """SHA-256 over the bytes of every parameter (modules) or tensor, in order."""
    h = hashlib.sha256()
    for item in modules_or_tensors:
        tensors = [p for p in item.parameters()] if isinstance(item, torch.nn.Module) else list(item)
        for t in tensors:
            t = t.detach().float().cpu().contiguous()
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def _collate(examples: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]).contiguous(),
        "text": [e["text"] for e in examples],
    }


def _label_columns(data, heads: Sequence[str]) -> dict[str, list[str]]:
    """``{head: each row's label name}`` for the data's label columns named like ``heads`` (as evaluation
    reads them: ClassLabel names, other values as strings). Heads without a column are left out."""
    from ..evaluation.data import as_label_names, column_vocabulary

    return {
        head: as_label_names(data, head, list(data[head]), column_vocabulary(data, head))
        for head in heads
        if head in data.column_names
    }


def _distinct_captions(column) -> list[str]:
    out: dict[str, None] = {}
    for cell in column:
        for c in [cell] if isinstance(cell, str) else list(cell):
            out.setdefault(c, None)
    return list(out)


# ============================================================================================ trainer
class GANTrainer:
    """Sets up a run from parsed arguments (everything that can fail on bad input fails here, before
    training), then :meth:`train` runs it."""

    def __init__(self, args: argparse.Namespace):
        from accelerate.utils import set_seed
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        from ..data.embedding_cache import PromptEmbeddingCache
        from ..data.loading import ProductImageDataset, load_image_text_dataset

        self.args = args = check_args(args)
        self.output_dir = Path(args.output_dir)
        self.accelerator = accelerator = accelerator_from_args(args)
        setup_logging(accelerator)
        set_seed(args.seed)
        self.device = accelerator.device
        self.precision = MixedPrecision(args.mixed_precision, self.device)
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)

        # 1. Which checkpoint (an explicit missing path fails here, before anything is loaded).
        self.resume_path = resolve_resume_checkpoint(args.resume_from_checkpoint, self.output_dir)

        # 2. Data (unknown columns/splits fail here).
        dataset_id = args.dataset_name or args.train_data_dir
        self.dataset_id = str(dataset_id)
        with accelerator.main_process_first():
            train_data = load_image_text_dataset(
                args.dataset_name,
                args.dataset_config_name,
                args.train_data_dir,
                split=args.train_split,
                image_column=args.image_column,
                caption_column=args.caption_column,
                cache_dir=args.cache_dir,
                max_samples=args.max_train_samples,
            )
        self.train_dataset = ProductImageDataset(
            train_data, args.resolution, args.image_column, args.caption_column, random_flip=args.random_flip
        )
        self.num_examples = len(self.train_dataset)
        self.sampler = ResumableBatchSampler(
            self.num_examples,
            args.train_batch_size,
            accelerator.num_processes,
            accelerator.process_index,
            seed=args.seed,
        )

        # 3. Models.
        c = load_components(args)
        self.components = c
        self.anchor: ProductGenerator | None = None
        if args.anchor_weight > 0 or args.diversity_weight > 0:
            if c.source != "pipeline":
                flag = "--anchor_weight" if args.anchor_weight > 0 else "--diversity_weight"
                raise ValueError(f"{flag} needs a pipeline to start from (its generator is the anchor)")
            # The pipeline's own generator, frozen; a resumed run rebuilds it from the same folder.
            self.anchor = copy.deepcopy(c.generator).requires_grad_(False).eval().to(self.device)
        self.scheduler = c.scheduler
        self.T = c.scheduler.config.num_train_timesteps
        c.text_encoder.to(self.device)
        max_len = min(c.tokenizer.model_max_length, c.text_encoder.config.max_position_embeddings)
        with accelerator.main_process_first():
            self.cache = PromptEmbeddingCache(
                c.text_encoder,
                c.tokenizer,
                device=self.device,
                cache_dir=args.embedding_cache_dir,
                max_length=max_len,
            )
            # Encode every caption once, in a fixed order: embeddings do not depend on batch composition
            # (so a resumed run sees bit-identical conditioning) and training never waits for the encoder.
            captions = _distinct_captions(train_data[args.caption_column])
            new = self.cache.precompute(captions + [""])
            if new and args.embedding_cache_dir and accelerator.is_main_process:
                self.cache.save()
        logger.info(f"Prompt-embedding cache: {len(self.cache)} captions ({new} encoded now)")
        self._pack_cache_on_device()
        self.empty = self.cache.encode([""], device=self.device)
        self.clip_guidance: CLIPGuidance | None = None
        if args.clip_guidance_model:
            self.clip_guidance = CLIPGuidance.from_pretrained(
                args.clip_guidance_model, self.device, args.clip_guidance_objective, cache_dir=args.cache_dir
            )
            # Its own text embeddings of every training caption, once, in a fixed order (like the cache).
            self.clip_guidance.precompute(captions)
            logger.info(
                f"CLIP guidance from {self.clip_guidance.source} ({args.clip_guidance_objective}, weight "
                f"{args.clip_guidance_weight}; its own "
                f"text tower embedded {len(captions)} captions)"
            )
        self.classifier_guidance: ClassifierGuidance | None = None
        if args.classifier_guidance_model:
            heads = args.classifier_guidance_heads
            heads = parse_heads(heads) if heads else None
            guide = ClassifierGuidance.from_pretrained(args.classifier_guidance_model, heads, self.device)
            ambiguous = guide.build_labels(
                list(train_data[args.caption_column]), _label_columns(train_data, guide.heads)
            )
            logger.info(
                f"Classifier guidance from {args.classifier_guidance_model} (heads "
                f"{format_heads(guide.head_weights)}, weight "
                f"{args.classifier_guidance_weight}; captions without one label, ignored: {ambiguous})"
            )
            self.classifier_guidance = guide

        # 4. Optimizers, LR schedules, EMA.
        G = c.generator
        # The discriminator this run trains. With --adversarial_weight 0 a pipeline's own one is only kept, to
        # be saved again as it was: frozen, with no optimizer or schedule, and not in the checkpoints (a resume
        # loads it from the pipeline again).
        D = c.discriminator if self.trains_discriminator else None
        if c.discriminator is not None and D is None:
            c.discriminator.requires_grad_(False)
        self.d_warmup = discriminator_warmup(args, c)
        if self.d_warmup:
            logger.info(
                f"Discriminator warm-up: steps 1-{self.d_warmup} train only the {c.discriminator_source} "
                f"discriminator against the {c.source}'s generator"
            )
        betas = (args.adam_beta1, args.adam_beta2)
        self.opt_g = opt_g = torch.optim.AdamW(
            G.parameters(),
            lr=args.learning_rate,
            betas=betas,
            eps=args.adam_epsilon,
            weight_decay=args.adam_weight_decay,
        )
        self.opt_d = opt_d = None if D is None else torch.optim.AdamW(
            D.parameters(),
            lr=args.d_learning_rate or args.learning_rate,
            betas=betas,
            eps=args.adam_epsilon,
            weight_decay=args.adam_weight_decay,
        )
        # The generator's schedule counts its own steps: a discriminator warm-up does not spend its LR warm-up.
        self.lr_g = get_scheduler(
            args.lr_scheduler,
            opt_g,
            num_warmup_steps=args.lr_warmup_steps,
            num_training_steps=max(args.max_train_steps - self.d_warmup, 1),
        )
        self.lr_d = None if D is None else get_scheduler(
            args.lr_scheduler,
            opt_d,
            num_warmup_steps=args.lr_warmup_steps,
            num_training_steps=args.max_train_steps,
        )
        self.ema = EMAModel(
            G.parameters(), decay=args.ema_decay, update_after_step=args.ema_update_after_step, foreach=True
        )
        self.guard = NonFiniteGuard(args.max_nonfinite_steps)
        self.early = EarlyStopping(args.early_stopping_patience)
        self.state = TrainerState(
            global_batch_size=args.train_batch_size
            * accelerator.num_processes
            * args.gradient_accumulation_steps,
            dataset_size=self.num_examples,
        )
        self.phases = PhaseHistory(self.state, _recorded_arguments(args))
        self.gen = torch.Generator(device=self.device).manual_seed(
            args.seed + 1_000_003 * accelerator.process_index
        )
        self.last_checkpoint: str | None = None

        # 5. Resume (into the unwrapped objects, before prepare).
        if self.resume_path is not None:
            self._load(self.resume_path)

        # 6. One prepare for both networks and both optimizers (LR schedules step on the global step).
        if D is None:
            self.D = None
            self.G, self.opt_g = accelerator.prepare(G, opt_g)
        else:
            self.G, self.D, self.opt_g, self.opt_d = accelerator.prepare(G, D, opt_g, opt_d)
        self.ema.to(self.device)
        self.loader = DataLoader(
            self.train_dataset,
            batch_sampler=self.sampler,
            collate_fn=_collate,
            num_workers=args.dataloader_num_workers,
            generator=torch.Generator().manual_seed(args.seed),
            pin_memory=self.device.type == "cuda",
        )
        self.policy = parse_policy(args.diffaugment)
        self.forced_nonfinite = _forced_nonfinite_steps()
        self.fid: FIDEvaluator | None = None
        self.fid_disabled_reason: str | None = (
            None if args.validation_fid_num_images else "--validation_fid_num_images 0"
        )
        self.stop_reason = "max_train_steps"

    def _pack_cache_on_device(self) -> None:
        """On a GPU, keep the whole prompt-embedding cache resident as one table, so a step gathers its
        conditioning there instead of stacking rows on the host and copying them (at batch 1024, 80 MB
        per step). Only when the table takes under a quarter of the free device memory."""
        if self.device.type != "cuda":
            return
        need, (free, _) = self.cache.nbytes, torch.cuda.mem_get_info(self.device)
        if need > free // 4:
            logger.info(
                f"Prompt-embedding cache kept on the host ({need / 2**30:.1f} GiB; {free / 2**30:.1f} free)"
            )
            return
        self.cache.pack(self.device)
        logger.info(f"Prompt-embedding cache packed on {self.device} ({need / 2**30:.2f} GiB)")

    # ------------------------------------------------------------------------------------ state
    def _states(self) -> dict[str, Any]:
        states = {
            "optimizer_g": self.opt_g,
            "optimizer_d": self.opt_d,
            "lr_scheduler_g": self.lr_g,
            "lr_scheduler_d": self.lr_d,
            "ema": self.ema,
            "precision": self.precision,
            "nonfinite_guard": self.guard,
            "early_stopping": self.early,
            "trainer": self.state,
            "phases": self.phases,
        }
        return {name: obj for name, obj in states.items() if obj is not None}

    @property
    def trains_discriminator(self) -> bool:
        """Whether the discriminator (if any) trains, so that checkpoints must hold it."""
        return self.components.discriminator is not None and self.args.adversarial_weight > 0

    def _models(self, unwrap: bool = False) -> dict[str, torch.nn.Module]:
        """The networks a checkpoint holds: the generator, and the discriminator when this run trains one."""
        if unwrap:
            G = self.accelerator.unwrap_model(self.G)
            D = None if self.D is None else self.accelerator.unwrap_model(self.D)
        else:
            G = self.components.generator
            D = self.components.discriminator if self.trains_discriminator else None
        return {"generator": G} if D is None else {"generator": G, "discriminator": D}

    def _load(self, path: Path) -> None:
        if self.trains_discriminator and not (path / "discriminator").is_dir():
            raise ValueError(
                f"{path} has no discriminator: the run that wrote it had --adversarial_weight 0. To train with "
                "one, start a new run from that run's saved pipeline (a new discriminator gets its warm-up), "
                "or resume with --adversarial_weight 0"
            )
        states = self._states()
        states["trainer"] = None  # read raw, to compare the data layout before applying it
        states["phases"] = None  # read raw: it needs the trainer state's step
        rng, raw = load_checkpoint(
            path,
            self._models(),
            states,
            process_index=self.accelerator.process_index,
            optional=("phases",),
        )
        saved = raw["trainer"]
        self.state.load_state_dict(
            {**saved, "global_batch_size": self.state.global_batch_size, "dataset_size": self.num_examples}
        )
        if (saved["global_batch_size"], saved["dataset_size"]) != (
            self.state.global_batch_size,
            self.num_examples,
        ):
            logger.warning(
                f"The checkpoint was trained with global batch {saved['global_batch_size']} on {saved['dataset_size']} "
                f"examples, this run has {self.state.global_batch_size} on {self.num_examples}: the data order "
                f"restarts at the beginning of epoch {self.state.epoch}"
            )
            self.state.batch_in_epoch = 0
        self.phases.load_state_dict(raw["phases"])
        if rng is not None:
            restore_rng_state(rng, {"train": self.gen})
        else:
            logger.warning(
                "The checkpoint has no RNG state for this process (different process count); reseeding"
            )
            self.gen.manual_seed(
                self.args.seed + 1_000_003 * self.accelerator.process_index + self.state.step
            )
        self.last_checkpoint = str(path)
        logger.info(
            f"Resumed at step {self.state.step} (epoch {self.state.epoch}, batch {self.state.batch_in_epoch})"
        )

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        path = save_checkpoint(
            acc,
            self.output_dir,
            self.state.step,
            models=self._models(unwrap=True),
            states=self._states(),
            rng_state=lambda: capture_rng_state({"train": self.gen}),
            total_limit=self.args.checkpoints_total_limit,
            metadata={"images_seen": self.state.images_seen},
        )
        self.last_checkpoint = str(path)
        return path

    # ------------------------------------------------------------------------------------ data
    def _condition(self, texts: list[str]):
        """Cached embeddings with condition dropout; returns (hidden, mask, pooled, dropped)."""
        e = self.cache.encode(texts, device=self.device)
        b = len(texts)
        dropped = torch.rand(b, generator=self.gen, device=self.device) < self.args.cond_drop_prob
        if self.args.cond_drop_prob > 0:
            m = dropped.view(b, 1, 1)
            hidden = torch.where(m, self.empty.prompt_embeds.expand_as(e.prompt_embeds), e.prompt_embeds)
            mask = torch.where(
                dropped.view(b, 1), self.empty.attention_mask.expand_as(e.attention_mask), e.attention_mask
            )
            pooled = torch.where(
                dropped.view(b, 1),
                self.empty.pooled_prompt_embeds.expand_as(e.pooled_prompt_embeds),
                e.pooled_prompt_embeds,
            )
        else:
            hidden, mask, pooled = e.prompt_embeds, e.attention_mask, e.pooled_prompt_embeds
        return hidden, mask, pooled, dropped

    # ------------------------------------------------------------------------------------ one step
    def train_step(self, micro: list[dict]) -> dict[str, float]:
        args, prec = self.args, self.precision
        n = len(micro)
        step_no = self.state.step + 1
        do_r1 = args.r1_gamma > 0 and step_no % args.r1_interval == 0
        force_nan = _is_forced(step_no, self.forced_nonfinite)
        conds = []
        for mb in micro:
            x0 = mb["pixel_values"].to(self.device, non_blocking=True)
            conds.append((x0, mb["text"], *self._condition(mb["text"])))
        pending: dict[str, torch.Tensor] = {}  # read back in one transfer at the end of the step

        def add(key, value):
            value = value.detach().float() / n
            pending[key] = pending[key] + value if key in pending else value

        if args.adversarial_weight > 0:
            res_d = self._discriminator_step(conds, add, do_r1=do_r1, force_nan=force_nan)
        else:  # no discriminator: it stays as it was loaded, and so do its optimizer and schedule
            res_d = StepResult(stepped=False)

        g_phase = step_no > self.d_warmup
        if g_phase:
            # the test hook's forced non-finite loss goes into the discriminator's, or G's when D is off
            res_g = self._generator_step(conds, add, force_nan=force_nan and args.adversarial_weight == 0)
        else:  # discriminator warm-up: G, its EMA, its optimizer and its LR schedule stay as they are
            res_g = StepResult(stepped=False)
        with warnings.catch_warnings():  # a schedule follows its phase's steps, also when a step was skipped
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            if g_phase:
                self.lr_g.step()
            if args.adversarial_weight > 0:
                self.lr_d.step()
        self.state.step = step_no
        self.state.images_seen += self.state.global_batch_size
        bad = self.guard.update(step_no, res_d, res_g, last_checkpoint=self.last_checkpoint)
        if bad:
            logger.warning(
                f"step {step_no}: non-finite loss or gradient, optimizer step skipped "
                f"({self.guard.consecutive} in a row, {self.guard.total_nonfinite} in total)"
            )
        stats = dict(zip(pending, torch.stack(list(pending.values())).tolist()))
        stats.update(
            {
                "skipped/nonfinite_total": self.guard.total_nonfinite,
                "skipped/amp_overflow_total": self.guard.total_overflow,
                "skipped/nonfinite_step": float(bad),
                "lr/generator": self.lr_g.get_last_lr()[0],
            }
        )
        if self.lr_d is not None:
            stats["lr/discriminator"] = self.lr_d.get_last_lr()[0]
        if prec.scaler is not None:
            stats["amp/loss_scale"] = float(prec.scaler.get_scale())
        for key in [k for k in stats if k.startswith("loss/") or k == "r1_penalty"]:
            if not math.isfinite(stats[key]):
                stats[key] = float("nan")
        return stats

    def _discriminator_step(self, conds: list[tuple], add, *, do_r1: bool, force_nan: bool) -> StepResult:
        """The discriminator phase of a step: real pairs against fresh fakes from the generator."""
        args, acc, sched, gen, prec = self.args, self.accelerator, self.scheduler, self.gen, self.precision
        G_mod, D_mod = acc.unwrap_model(self.G), acc.unwrap_model(self.D)
        n, z_dim = len(conds), G_mod.config.z_dim
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        for i, (x0, texts, hidden, mask, pooled, dropped) in enumerate(conds):
            b = x0.shape[0]
            sync = acc.no_sync(self.D) if i < n - 1 else contextlib.nullcontext()
            with sync:
                t = torch.randint(0, self.T, (b,), generator=gen, device=self.device)
                x_t, x_tp1 = sched.sample_training_pair(x0, t, generator=gen)
                with torch.no_grad(), prec.autocast():
                    z = torch.randn(b, z_dim, generator=gen, device=self.device)
                    x0_fake = G_mod(x_tp1, t, z, hidden, pooled, mask).sample.float()
                x_t_fake = sched.sample_posterior(x0_fake, x_tp1, t, generator=gen)
                if do_r1:
                    x_t = x_t.detach().requires_grad_(True)
                samples, noisy = diff_augment(
                    [torch.cat([x_t, x_t_fake]), torch.cat([x_tp1, x_tp1])], self.policy, gen
                )
                with prec.autocast():
                    out = self.D(samples, noisy, torch.cat([t, t]), torch.cat([pooled, pooled]))
                    real_logits, fake_logits = out.logits.float().split(b)
                    loss_real, loss_fake = discriminator_loss(real_logits, fake_logits)
                    loss = loss_real + loss_fake
                    if args.matching_loss_weight > 0:
                        index, valid = mismatched_captions(texts, dropped, gen)
                        index = index.to(self.device)
                        wrong = (
                            out.unconditional_logits[:b].float()
                            + D_mod.text_logits(out.features[:b], pooled[index]).float()
                        )
                        loss_match = matching_loss(wrong, valid)
                        loss = loss + args.matching_loss_weight * loss_match
                        add("loss/d_match", loss_match.detach())
                    if force_nan:
                        loss = loss * float("nan")
                    # Finiteness is judged on the loss without R1: under fp16 the penalty's gradient is
                    # taken of the *scaled* logits and may overflow, which is loss-scale calibration
                    # (the gradients become inf, the scaler backs off), not divergence.
                    finite &= torch.isfinite(loss.detach())
                    if do_r1:
                        penalty = r1_penalty(real_logits, x_t, prec.scaler)
                        loss = loss + 0.5 * args.r1_gamma * args.r1_interval * penalty
                        add("r1_penalty", penalty.detach())
                loss = loss / n
                acc.backward(prec.scale(loss))
            add("loss/d_real", loss_real.detach())
            add("loss/d_fake", loss_fake.detach())
            add("d_accuracy/real", (real_logits.detach() > 0).float().mean())
            add("d_accuracy/fake", (fake_logits.detach() < 0).float().mean())
        return guarded_step(self.opt_d, self.D.parameters(), finite, prec, acc, args.max_grad_norm)

    def _generator_step(self, conds: list[tuple], add, force_nan: bool = False) -> StepResult:
        """The generator phase of a step: D frozen, and called unwrapped so DDP(D) expects no gradients."""
        args, acc, sched, gen, prec = self.args, self.accelerator, self.scheduler, self.gen, self.precision
        G_mod = acc.unwrap_model(self.G)
        D_mod = None if self.D is None else acc.unwrap_model(self.D)
        n, z_dim = len(conds), G_mod.config.z_dim
        anchor_weight = self.anchor_weight(self.state.step + 1)
        if D_mod is not None:
            D_mod.requires_grad_(False)
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        try:
            for i, (x0, texts, hidden, mask, pooled, dropped) in enumerate(conds):
                b = x0.shape[0]
                sync = acc.no_sync(self.G) if i < n - 1 else contextlib.nullcontext()
                with sync:
                    t = torch.randint(0, self.T, (b,), generator=gen, device=self.device)
                    noise = torch.randn(x0.shape, generator=gen, device=self.device, dtype=x0.dtype)
                    x_tp1 = sched.add_noise(x0, noise, t)
                    with prec.autocast():
                        z = torch.randn(b, z_dim, generator=gen, device=self.device)
                    inputs = (x_tp1, t, z, hidden, pooled, mask)
                    if args.diversity_weight > 0:  # a second draw of x_{t+1} and z, in the same forward
                        noise2 = torch.randn(x0.shape, generator=gen, device=self.device, dtype=x0.dtype)
                        z2 = torch.randn(b, z_dim, generator=gen, device=self.device)
                        second = (sched.add_noise(x0, noise2, t), t, z2, hidden, pooled, mask)
                        inputs = tuple(None if u is None else torch.cat([u, v]) for u, v in zip(inputs, second))
                    with prec.autocast():
                        x0_both = self.G(*inputs).sample.float()
                    x0_fake, x0_fake2 = x0_both[:b], x0_both[b:]
                    if args.adversarial_weight > 0:
                        x_t_fake = sched.sample_posterior(x0_fake, x_tp1, t, generator=gen)
                        samples, noisy = diff_augment([x_t_fake, x_tp1], self.policy, gen)
                        with prec.autocast():
                            loss_g = generator_loss(D_mod(samples, noisy, t, pooled).logits)
                        loss = loss_g * args.adversarial_weight  # x 1.0 (the default) is exact, in loss_g's dtype
                        add("loss/g", loss_g.detach())
                    else:
                        loss = x0_fake.new_zeros(())
                    with prec.autocast():
                        if self.clip_guidance is not None:
                            text_clip = self.clip_guidance.text_embeds(texts)
                            loss_clip = self.clip_guidance.loss(x0_fake, text_clip, keep=~dropped, generator=gen)
                            loss = loss + args.clip_guidance_weight * loss_clip
                            add("loss/g_clip", loss_clip.detach())
                        if self.classifier_guidance is not None:
                            loss_cls = self.classifier_guidance.loss(x0_fake, texts, keep=~dropped, generator=gen)
                            loss = loss + args.classifier_guidance_weight * loss_cls
                            add("loss/g_cls", loss_cls.detach())
                            if len(self.classifier_guidance.heads) > 1:
                                for head, value in self.classifier_guidance.last_head_losses.items():
                                    add(f"loss/g_cls_{head}", value)
                        if anchor_weight > 0 or args.diversity_weight > 0:
                            with torch.no_grad():
                                x0_start = self.anchor(*inputs).sample.float()
                        if anchor_weight > 0:
                            loss_anchor = torch.nn.functional.mse_loss(x0_fake, x0_start[:b])
                            loss = loss + anchor_weight * loss_anchor
                            add("loss/g_anchor", loss_anchor.detach())
                        if args.diversity_weight > 0:
                            loss_div, d, d_start = diversity_floor_loss(x0_fake, x0_fake2, x0_start[:b], x0_start[b:])
                            loss = loss + args.diversity_weight * loss_div
                            add("loss/g_diversity", loss_div.detach())
                            add("diversity/generator", d.detach())
                            add("diversity/start", d_start.detach())
                    loss = loss / n
                    if force_nan:
                        loss = loss * float("nan")
                    finite &= torch.isfinite(loss.detach())
                    acc.backward(prec.scale(loss))
        finally:
            if D_mod is not None:
                D_mod.requires_grad_(True)
        res_g = guarded_step(self.opt_g, self.G.parameters(), finite, prec, acc, args.max_grad_norm)
        if res_g.stepped:
            self.ema.step(G_mod.parameters())
        return res_g

    def anchor_weight(self, step_no: int) -> float:
        """``--anchor_weight`` at training step ``step_no``, decayed over ``--anchor_steps`` generator steps."""
        weight, span = self.args.anchor_weight, self.args.anchor_steps
        if self.anchor is None:
            return 0.0
        if span is None:
            return weight
        return weight * max(0.0, 1.0 - (step_no - self.d_warmup - 1) / span)

    # ------------------------------------------------------------------------------------ validation
    def ema_generator(self) -> ProductGenerator:
        """A fresh generator holding the EMA weights (for validation and the final save)."""
        G_mod = self.accelerator.unwrap_model(self.G)
        ema_g = ProductGenerator.from_config(G_mod.config)
        self.ema.copy_to(ema_g.parameters())
        return ema_g.to(self.device).eval()

    def pipeline(self, generator: ProductGenerator):
        from ..pipeline import ProductImagePipeline

        c = self.components
        pipe = ProductImagePipeline(
            tokenizer=c.tokenizer,
            text_encoder=c.text_encoder,
            generator=generator,
            scheduler=DDGANScheduler.from_config(self.scheduler.config),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _init_fid(self) -> None:
        args = self.args
        if self.fid is not None or self.fid_disabled_reason is not None:
            return
        reason = fid_unavailable_reason()
        if reason is None:
            try:
                from ..data.loading import ProductImageDataset, load_image_text_dataset

                data = load_image_text_dataset(
                    args.dataset_name,
                    args.dataset_config_name,
                    args.train_data_dir,
                    split=args.validation_split,
                    image_column=args.image_column,
                    caption_column=args.caption_column,
                    cache_dir=args.cache_dir,
                    max_samples=args.validation_fid_num_images,
                )
                ds = ProductImageDataset(data, args.resolution, args.image_column, args.caption_column)
                items = [ds[i] for i in range(len(ds))]
                real = to_uint8_nhwc(torch.stack([it["pixel_values"] for it in items]))
                self.fid = FIDEvaluator(
                    real,
                    [it["text"] for it in items],
                    self.dataset_id,
                    args.validation_split,
                    device=self.device,
                    seed=args.seed,
                )
            except (ValueError, FileNotFoundError) as err:
                reason = f"the validation split is unusable ({err})"
        if reason is not None:
            self.fid_disabled_reason = reason
            logger.warning(f"Validation FID is skipped: {reason}")

    def validate(self) -> bool:
        """Grid (+ FID) on the main process; returns True (on every process) when early stopping triggers."""
        acc, args, step = self.accelerator, self.args, self.state.step
        stop = torch.zeros(1, device=self.device)
        if acc.is_main_process:
            started = time.perf_counter()
            ema_g = self.ema_generator()
            pipe = self.pipeline(ema_g)
            logs: dict[str, float] = {}
            if args.validation_prompts and args.num_validation_images:
                grid = generate_grid(
                    pipe,
                    args.validation_prompts,
                    args.num_validation_images,
                    args.seed,
                    args.validation_guidance_scale,
                )
                path = self.output_dir / "validation" / f"step-{step:07d}.png"
                buf = io.BytesIO()
                grid.save(buf, format="PNG")
                atomic_write_bytes(path, buf.getvalue())
                log_image(acc, "validation/samples", grid, step)
            self._init_fid()
            if self.fid is not None:
                fid = self.fid(pipe, args.validation_guidance_scale)
                logs["validation/fid"] = fid
                if self.early.update(step, fid):
                    with atomic_directory(self.output_dir / BEST_GENERATOR_DIR, overwrite=True) as tmp:
                        ema_g.save_pretrained(tmp, safe_serialization=True)
                        atomic_write_text(tmp / "best.json", json.dumps({"step": step, "fid": fid}))
                    logger.info(f"step {step}: validation FID {fid:.3f} (new best)")
                else:
                    logger.info(
                        f"step {step}: validation FID {fid:.3f} (best {self.early.best:.3f} at step "
                        f"{self.early.best_step}, {self.early.since_best} validation(s) without improvement)"
                    )
                if self.early.should_stop:
                    stop[0] = 1
            logs["validation/seconds"] = time.perf_counter() - started
            acc.log(logs, step=step)
        from accelerate.utils import broadcast

        stop = broadcast(stop, from_process=0)
        return bool(stop.item())

    # ------------------------------------------------------------------------------------ the loop
    def train(self) -> dict[str, Any]:
        args, acc = self.args, self.accelerator
        config = _recorded_arguments(args)
        init_trackers(acc, args.tracker_project_name, config)
        logger.info("***** Running training *****")
        logger.info(f"  Examples = {self.num_examples}, start = {self.components.source}, T = {self.T}")
        logger.info(
            f"  Batch per process = {args.train_batch_size}, processes = {acc.num_processes}, "
            f"accumulation = {args.gradient_accumulation_steps}, global batch = {self.state.global_batch_size}"
        )
        logger.info(
            f"  Steps = {args.max_train_steps} (starting at {self.state.step}), precision = {args.mixed_precision}"
        )
        bar = progress_bar(acc, args.max_train_steps, self.state.step)
        meter = Throughput()
        batches = endless_batches(self.loader, self.sampler, self.state)
        deadline = Deadline(args.max_train_seconds, args.train_time_clock)
        try:
            while self.state.step < args.max_train_steps:
                if deadline.expired_everywhere(acc):
                    self.stop_reason = f"max_train_seconds ({args.max_train_seconds:g} s, {args.train_time_clock} clock)"
                    logger.info(f"Stopping at step {self.state.step}: {self.stop_reason}")
                    break
                micro = [next(batches) for _ in range(args.gradient_accumulation_steps)]
                logs = self.train_step(micro)
                meter.add(self.state.global_batch_size)
                logs["images_per_second"] = meter.rate()
                acc.log(logs, step=self.state.step)
                bar.update(1)
                bar.set_postfix(**_progress_postfix(logs), skipped=self.guard.total_nonfinite)
                stop = False
                if self.state.step % args.validation_steps == 0:
                    stop = self.validate()
                    meter.rate()  # validation time is not training throughput
                if self.state.step % args.checkpointing_steps == 0 or stop:
                    self.save_checkpoint()
                    meter.rate()
                if stop:
                    self.stop_reason = (
                        f"early stopping: validation FID did not improve for "
                        f"{args.early_stopping_patience} validations"
                    )
                    logger.info(f"Stopping at step {self.state.step}: {self.stop_reason}")
                    break
            bar.close()
            if self.last_checkpoint is None or not self.last_checkpoint.endswith(f"-{self.state.step}"):
                self.save_checkpoint()
            return self.finish()
        finally:
            bar.close()
            acc.end_training()

    # ------------------------------------------------------------------------------------ the end
    def finish(self) -> dict[str, Any]:
        acc, args = self.accelerator, self.args
        acc.wait_for_everyone()
        from accelerate.utils import gather_object

        models = self._models(unwrap=True)
        digest = parameter_digest(*models.values(), self.ema.shadow_params)
        digests = gather_object([digest])
        summary: dict[str, Any] = {
            "global_step": self.state.step,
            "images_seen": self.state.images_seen,
            "epochs": self.state.images_seen / max(self.num_examples, 1),
            "stop_reason": self.stop_reason,
            "nonfinite_steps_skipped": self.guard.total_nonfinite,
            "amp_overflow_steps_skipped": self.guard.total_overflow,
            "num_processes": acc.num_processes,
            "parameter_digests": digests,
            "replicas_identical": len(set(digests)) == 1,
            "fid_history": self.early.history,
            "best_fid": self.early.best,
            "best_fid_step": self.early.best_step,
            "last_checkpoint": self.last_checkpoint,
            "phases": self.phases.phases(),
        }
        if not summary["replicas_identical"]:
            logger.error(f"The processes ended with different parameters: {digests}")
        if acc.is_main_process:
            best_dir = self.output_dir / BEST_GENERATOR_DIR
            if self.early.best is not None and best_dir.is_dir():
                final_g = (
                    ProductGenerator.from_pretrained(best_dir, use_safetensors=True).to(self.device).eval()
                )
                summary["saved_generator"] = (
                    f"EMA weights of step {self.early.best_step} (best validation FID)"
                )
            else:
                final_g = self.ema_generator()
                summary["saved_generator"] = f"EMA weights of step {self.state.step}"
            pipe = self.pipeline(final_g)
            pipe.save_pretrained(self.output_dir)
            if self.saves_discriminator:  # trained by this run, or the pipeline's own kept as it was
                self.components.discriminator.save_pretrained(self.output_dir / "discriminator", safe_serialization=True)
            prompts = args.validation_prompts
            cols = max(args.num_validation_images, 1)
            sample_grid = None
            if prompts:
                grid = generate_grid(pipe, prompts, cols, args.seed, args.validation_guidance_scale)
                grid.save(self.output_dir / "samples.png")
                sample_grid = "samples.png"
            self._write_card(summary, sample_grid)
            atomic_write_text(self.output_dir / SUMMARY_FILE, json.dumps(summary, indent=1))
            logger.info(f"Saved the pipeline ({summary['saved_generator']}) to {self.output_dir}")
            if args.push_to_hub:
                files = files_to_upload(self.output_dir)
                logger.info(
                    f"Uploading {len(files)} files to the Hub repository {args.hub_model_id}: {files}"
                )
                push_folder_to_hub(
                    self.output_dir,
                    args.hub_model_id,
                    token=args.hub_token,
                    private=args.hub_private_repo,
                    commit_message=f"prodimg GAN training, step {self.state.step}",
                )
        acc.wait_for_everyone()
        return summary

    @property
    def saves_discriminator(self) -> bool:
        """Whether the saved pipeline gets a ``discriminator/``: whenever the run has one, i.e. one this run
        trained or the pipeline's own kept as it was. With ``--adversarial_weight 0`` and none to keep,
        :func:`load_components` builds none: an untrained initialisation saved as a pipeline's discriminator
        would be continued by a later fine-tune as a trained one, without the warm-up a new one gets."""
        return self.components.discriminator is not None

    def _write_card(self, summary: dict, sample_grid: str | None) -> None:
        args, c = self.args, self.components
        dataset = {
            "name": self.dataset_id,
            "config": args.dataset_config_name,
            "split": args.train_split,
            "examples": self.num_examples,
            "image_column": args.image_column,
            "caption_column": args.caption_column,
            "resolution": f"{args.resolution} px",
        }
        training = {
            "started from": f"{args.pretrained_model_name_or_path} ({c.source})",
            "steps": summary["global_step"],
            "images seen": summary["images_seen"],
            "epochs": round(summary["epochs"], 3),
            "global batch size": self.state.global_batch_size,
            "processes": summary["num_processes"],
            "mixed precision": args.mixed_precision,
            "learning rate (G / D)": f"{args.learning_rate} / {args.d_learning_rate or args.learning_rate}",
            "R1": f"gamma {args.r1_gamma}, every {args.r1_interval} steps",
            "DiffAugment": args.diffaugment,
            "matching-aware loss weight": args.matching_loss_weight,
            "CLIP guidance": (
                f"{args.clip_guidance_model}, {args.clip_guidance_objective}, weight {args.clip_guidance_weight}"
                if args.clip_guidance_model
                else "off"
            ),
            "classifier guidance": (
                f"{args.classifier_guidance_model}, "
                f"heads {format_heads(self.classifier_guidance.head_weights)}, "
                f"weight {args.classifier_guidance_weight}"
                if self.classifier_guidance is not None
                else "off"
            ),
            "condition dropout": args.cond_drop_prob,
            "anchor to the starting generator": (
                f"weight {args.anchor_weight}"
                + (f", decayed to 0 over {args.anchor_steps} generator steps" if args.anchor_steps else "")
                if args.anchor_weight > 0
                else "off"
            ),
            "diversity floor against the starting generator": (
                f"weight {args.diversity_weight}" if args.diversity_weight > 0 else "off"
            ),
            "discriminator": (
                f"{c.discriminator_source}, {self.d_warmup} warm-up steps, adversarial weight {args.adversarial_weight}"
                if args.adversarial_weight > 0
                else "none (adversarial weight 0: "
                + ("not trained; the loaded one saved as it was)" if self.saves_discriminator else "none built)")
            ),
            "EMA decay": args.ema_decay,
            "phases": _phase_lines(summary["phases"], self.phases.arguments),
            "saved generator": summary["saved_generator"],
            "stop reason": summary["stop_reason"],
            "non-finite steps skipped": summary["nonfinite_steps_skipped"],
        }
        metrics = {}
        if summary["best_fid"] is not None:
            metrics[
                f"validation FID (best, step {summary['best_fid_step']}, "
                f"{self.fid.key.num_images if self.fid else '?'} images)"
            ] = summary["best_fid"]
            last_step, last_fid = summary["fid_history"][-1]
            metrics[f"validation FID (last, step {int(last_step)})"] = last_fid
        configs = {"generator": dict(c.generator.config)}
        if c.discriminator is not None:
            configs["discriminator"] = dict(c.discriminator.config)
        configs["scheduler"] = dict(self.scheduler.config)
        configs["training arguments"] = _recorded_arguments(args)
        card = render_pipeline_card(
            model_name=args.hub_model_id or self.output_dir.name,
            dataset=dataset,
            training=training,
            configs=configs,
            metrics=metrics,
            sample_grid=sample_grid,
            sample_prompts=args.validation_prompts,
            base_model=args.pretrained_model_name_or_path,
        )
        write_model_card(self.output_dir, card)


# ============================================================================================ phases
# Arguments that say how a run is driven, logged or stored, not what its steps compute: a resume that
# changes only these continues the same phase.
_PHASE_IGNORED = frozenset(
    {
        "resume_from_checkpoint",
        "max_train_steps",
        "max_train_seconds",
        "train_time_clock",
        "output_dir",
        "logging_dir",
        "report_to",
        "tracker_project_name",
        "checkpointing_steps",
        "checkpoints_total_limit",
        "push_to_hub",
        "hub_model_id",
        "hub_private_repo",
        "cache_dir",
        "embedding_cache_dir",
        "dataloader_num_workers",
        "ddp_timeout",
        "validation_steps",
        "validation_prompts",
        "num_validation_images",
        "validation_guidance_scale",
        "validation_fid_num_images",
        "validation_split",
    }
)


def _recorded_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments a phase records: all but the Hub token."""
    return {k: v for k, v in sorted(vars(args).items()) if k != "hub_token"}


def _phase_lines(phases: list[dict[str, Any]], reference: dict[str, Any]) -> str:
    """The card's phase entry: the steps and recipe of each resumed phase, when there was more than one."""
    lines = summarize_phases(phases, reference, _PHASE_IGNORED)
    return "one (the training arguments below)" if len(lines) <= 1 else "; ".join(lines)


# ============================================================================================ entry points
def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 for a bad argument/dataset/model (before training), 3 when
    too many consecutive non-finite steps stopped the run."""
    args = parse_args(argv)
    try:
        trainer = GANTrainer(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"train_product_gan.py: error: {err}", file=sys.stderr)
        return 2
    try:
        trainer.train()
    except NonFiniteTrainingError as err:
        logger.error(str(err))
        print(f"train_product_gan.py: error: {err}", file=sys.stderr)
        return 3
    return 0


def args_from_kwargs(**kwargs: Any) -> list[str]:
    """``dict(output_dir="runs/x", train_batch_size=64, push_to_hub=True)`` -> the equivalent argv."""
    parser = build_parser()
    flags = {a.dest: a for a in parser._actions}
    argv: list[str] = []
    for key, value in kwargs.items():
        if key not in flags:
            raise TypeError(f"unknown training option {key!r}")
        action = flags[key]
        if isinstance(action, argparse._StoreTrueAction):
            if value:
                argv.append(f"--{key}")
            continue
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def train_product_gan(**kwargs: Any) -> dict[str, Any]:
    """Run a training in this process (no subcommand, no ``accelerate launch``): keyword arguments are
    the script's flags without dashes; returns the run summary. Raises ``ValueError`` for bad options
    and ``NonFiniteTrainingError`` if the run diverges."""
    argv = args_from_kwargs(**kwargs)
    args = build_parser().parse_args(argv)
    return GANTrainer(args).train()
