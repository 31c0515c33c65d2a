"""``prodimg generate``: write product images for a prompt as PNG files."""

from __future__ import annotations

import argparse
import io
import re
from pathlib import Path

DEFAULT_PIPELINE_NAME = "prodimg-fashion-32"


def default_pipeline_dir() -> Path:
    """The shipped default: ``pipelines/prodimg-fashion-32`` of the source checkout, else of the CWD."""
    repo = Path(__file__).resolve().parents[2] / "pipelines" / DEFAULT_PIPELINE_NAME
    return repo if repo.is_dir() else Path.cwd() / "pipelines" / DEFAULT_PIPELINE_NAME


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="generate product images from a text description")
    p.add_argument("prompt", help='the product description, e.g. "red striped dress"')
    p.add_argument("--pipeline", default=None, help=f"saved pipeline folder or Hub id (default: pipelines/{DEFAULT_PIPELINE_NAME})")
    p.add_argument("-n", "--num_images", type=int, default=4, help="images to generate (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); image i uses seed + i")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the pipeline's trained steps)")
    p.add_argument("--guidance_scale", type=float, default=1.0, help="classifier-free guidance (default 1.0: off)")
    p.add_argument("--negative_prompt", default=None)
    p.add_argument("-o", "--output_dir", default="outputs", help="where to write PNGs (default ./outputs)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def slugify(text: str, max_len: int = 48) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "image"


def run(args: argparse.Namespace) -> int:
    import torch

    from ..pipeline import ProductImagePipeline
    from ..utils import atomic_write_bytes

    if args.num_images < 1:
        raise ValueError(f"--num_images must be >= 1, got {args.num_images}")
    pipeline_path = args.pipeline or str(default_pipeline_dir())
    if args.pipeline is None and not Path(pipeline_path).is_dir():
        raise FileNotFoundError(
            f"the default pipeline {pipeline_path} is missing; pass --pipeline DIR with a saved pipeline folder"
        )
    pipe = ProductImagePipeline.from_pretrained(pipeline_path).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator(args.device).manual_seed(args.seed + i) for i in range(args.num_images)]
    images = pipe(
        args.prompt,
        negative_prompt=args.negative_prompt,
        num_images_per_prompt=args.num_images,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        generator=generators,
    ).images
    out_dir = Path(args.output_dir)
    slug = slugify(args.prompt)
    for i, image in enumerate(images):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        path = out_dir / f"{slug}-seed{args.seed + i}.png"
        atomic_write_bytes(path, buf.getvalue())
        print(path)
    return 0
