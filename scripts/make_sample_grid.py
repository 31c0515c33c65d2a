"""Write the README's sample grid: real outputs of a pipeline, the prompt under each image.

    python scripts/make_sample_grid.py                       # pipelines/prodimg-fashion-32 -> docs/images/default_samples.png
    python scripts/make_sample_grid.py --pipeline DIR --out grid.png --seed 0
    python scripts/make_sample_grid.py --per_prompt 8 --columns 1 --out docs/images/default_seeds.png \
        --prompts "red striped dress" "blue sneaker" "black leather bag"     # 8 seeds of each prompt
"""

from __future__ import annotations

import argparse
import io
import textwrap

import torch
from PIL import Image, ImageDraw, ImageFont

from prodimg import ProductImagePipeline
from prodimg.utils import atomic_write_bytes

PROMPTS = [
    "red striped dress", "blue sneaker", "black leather bag", "white t-shirt",
    "yellow dotted pullover", "green checked coat", "pink sandal", "brown ankle boot",
    "purple shirt", "orange trousers", "gray checked bag", "blue t-shirt (held-out pair)",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default="pipelines/prodimg-fashion-32")
    parser.add_argument("--out", default="docs/images/default_samples.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per_prompt", type=int, default=2, help="images per prompt (seeds seed, seed+1, ...)")
    parser.add_argument("--scale", type=int, default=3, help="nearest-neighbour upscaling of each image")
    parser.add_argument("--prompts", nargs="+", default=PROMPTS, help="prompts (default: the README's twelve)")
    parser.add_argument("--columns", type=int, default=4, help="prompts per row of the grid")
    args = parser.parse_args()
    if args.per_prompt < 1 or args.columns < 1 or args.scale < 1:
        parser.error("--per_prompt, --columns and --scale must be >= 1")

    pipe = ProductImagePipeline.from_pretrained(args.pipeline, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    labels = list(args.prompts)
    prompts = [p.replace(" (held-out pair)", "") for p in labels]
    gens = [torch.Generator().manual_seed(args.seed + j) for _ in prompts for j in range(args.per_prompt)]
    images = pipe(prompts, num_images_per_prompt=args.per_prompt, generator=gens).images

    size = images[0].width * args.scale
    cell_w, text_h, cols = size * args.per_prompt + 8, 30, min(args.columns, len(labels))
    rows = (len(labels) + cols - 1) // cols
    grid = Image.new("RGB", (cols * cell_w, rows * (size + text_h)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i, prompt in enumerate(labels):
        x, y = (i % cols) * cell_w, (i // cols) * (size + text_h)
        for j in range(args.per_prompt):
            im = images[i * args.per_prompt + j].resize((size, size), Image.NEAREST)
            grid.paste(im, (x + 4 + j * size, y))
        for k, line in enumerate(textwrap.wrap(prompt, 30)[:2]):
            draw.text((x + 4, y + size + 2 + 12 * k), line, fill="black", font=font)
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    atomic_write_bytes(args.out, buf.getvalue())
    print(args.out)


if __name__ == "__main__":
    main()
