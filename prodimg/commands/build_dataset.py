"""``prodimg build-dataset``: build a training dataset (today: the fashion catalog).

prodimg build-dataset fashion-catalog --out data/fashion-catalog-32 --resolution 32 --seed 0
"""

from __future__ import annotations

import argparse
import logging
import time

DATASETS = ("fashion-catalog",)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build-dataset",
        help="build a dataset (fashion-catalog: Fashion-MNIST rendered as captioned product photos)",
        description=(
            "Build the fashion catalog from Debian's dataset-fashion-mnist "
            "(sudo apt-get install -y dataset-fashion-mnist) into a datasets save_to_disk folder "
            "with a dataset card (README.md) and a contact sheet."
        ),
    )
    p.add_argument("name", choices=DATASETS, help="which dataset to build")
    p.add_argument("--out", required=True, help="output folder (datasets save_to_disk layout)")
    p.add_argument("--resolution", type=int, choices=(32, 64), default=32, help="image size (default 32)")
    p.add_argument(
        "--seed", type=int, default=0, help="random seed; same seed = byte-identical output (default 0)"
    )
    p.add_argument("--limit", type=int, default=None, help="at most N items per split (previews, tests)")
    p.add_argument(
        "--num_workers", type=int, default=1, help="processes for rendering/PNG encoding (default 1)"
    )
    p.add_argument(
        "--source_dir", default=None, help="folder with the Fashion-MNIST IDX files (default: Debian's)"
    )
    p.add_argument(
        "--parquet", action="store_true", help="also export every split to OUT/parquet/{split}.parquet"
    )
    p.add_argument("--push_to_hub", metavar="REPO_ID", default=None, help="upload to this Hub dataset repo")
    p.add_argument("--private", action="store_true", help="create the Hub repo as private")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.catalog import build_fashion_catalog

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("prodimg.data.catalog").setLevel(logging.INFO)
    if args.num_workers < 1:
        raise ValueError(f"--num_workers must be >= 1, got {args.num_workers}")
    start = time.perf_counter()
    try:
        dataset = build_fashion_catalog(
            args.out,
            resolution=args.resolution,
            seed=args.seed,
            limit=args.limit,
            source_dir=args.source_dir,
            num_workers=args.num_workers,
            parquet=args.parquet,
            push_to_hub=args.push_to_hub,
            private=args.private or None,
            overwrite=args.overwrite,
        )
    except FileExistsError as err:
        raise ValueError(str(err)) from err
    sizes = ", ".join(f"{name} {len(split):,}" for name, split in dataset.items())
    print(f"built {args.name} at {args.out} in {time.perf_counter() - start:.1f}s ({sizes})")
    if args.push_to_hub:
        print(f"pushed to https://huggingface.co/datasets/{args.push_to_hub}")
    return 0
