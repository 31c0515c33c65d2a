"""``prodimg eval``: generate images for a dataset split's captions and write a JSON metrics report."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..backends import BACKENDS, DTYPES
    from ..evaluation.evaluate import ALL_METRICS

    p = subparsers.add_parser(
        "eval",
        help="evaluate a pipeline on a dataset split (FID/KID, precision/recall, CLIP score, attribute accuracy)",
        description="Generate one image per caption of the split's first --num_images rows (row i: seed + i) and "
                    "write report.json (metrics, sampling speed, the judges' own accuracy) and grid.png. "
                    "Inception runs at about 10 images/s on a CPU: 1000 images take a few minutes per split "
                    "(real-image features are cached per dataset/split/resolution/count).",
    )
    p.add_argument("--pipeline", required=True, help="saved pipeline folder or Hub id")
    p.add_argument("--dataset", required=True, help="dataset: save_to_disk folder, parquet, imagefolder or Hub id")
    p.add_argument("--split", default="test", help="split(s), comma-separated, e.g. test,test_unseen_pairs (default test)")
    p.add_argument("--num_images", type=int, default=1000, help="first N rows of each split (default 1000; 10000 for "
                   "paper-comparable FID)")
    p.add_argument("--batch_size", type=int, default=64, help="generation and feature batch size (default 64)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the pipeline's trained steps)")
    p.add_argument("--guidance_scale", type=float, default=1.0, help="classifier-free guidance (default 1.0: off)")
    p.add_argument("--clip_model", default=None,
                   help="CLIP judge for CLIP score: a train_clip.py output (uses its clip/), a CLIP folder or a Hub id "
                        "(default: the pipeline's own clip/ if it has one, else CLIP score is skipped; 'none' disables)")
    p.add_argument("--classifier", default=None,
                   help="attribute classifier folder (default: the shipped prodimg/assets/attribute_classifier)")
    p.add_argument("--metrics", default=None,
                   help=f"comma-separated subset of {','.join(ALL_METRICS)} (default: all that apply)")
    p.add_argument("--diversity_prompts", type=int, default=16,
                   help="diversity: prompts of the first split, each with distinct labels (default 16)")
    p.add_argument("--diversity_seeds", type=int, default=8, help="diversity: seeds per prompt (default 8)")
    p.add_argument("--image_column", default="image")
    p.add_argument("--caption_column", default="text")
    p.add_argument("--output_dir", default="outputs/eval", help="where report.json and grid.png go (default outputs/eval)")
    p.add_argument("--seed", type=int, default=0, help="row i is generated with seed + i (default 0)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", choices=BACKENDS, default="pytorch",
                   help="pytorch, or onnxruntime with --pipeline a `prodimg export onnx` folder (default pytorch)")
    p.add_argument("--int8", action="store_true", help="onnxruntime backend: evaluate the export's int8 generator")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="pytorch backend: the pipeline's weights and compute dtype (default float32)")
    p.add_argument("--num_threads", type=int, default=None, help="onnxruntime intra-op threads (default: its own)")
    p.add_argument("--compile", action="store_true",
                   help="pytorch backend: torch.compile the generator; each batch shape is compiled before "
                        "the timed sampling (with --dtype bfloat16, the fastest CPU setting: see the "
                        "shipped model card)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import run_eval

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    report = run_eval(
        args.pipeline, args.dataset, args.split, num_images=args.num_images, batch_size=args.batch_size,
        steps=args.steps, guidance_scale=args.guidance_scale, clip_model=args.clip_model, classifier=args.classifier,
        metrics=metrics, output_dir=args.output_dir, seed=args.seed, device=args.device,
        image_column=args.image_column, caption_column=args.caption_column, backend=args.backend, int8=args.int8,
        num_threads=args.num_threads, dtype=args.dtype, diversity_prompts=args.diversity_prompts, diversity_seeds=args.diversity_seeds,
        compile=args.compile,
    )
    print(json.dumps(report["metrics"], indent=1))
    for head, by_split in report.get("per_class", {}).items():
        for split, info in by_split.items():
            gen, real = info["generated"], info["real_accuracy"]
            rows = sorted((acc, cls) for cls, acc in gen["accuracy"].items() if acc is not None)[:3]
            worst = "; ".join(
                f"{cls} {acc:.0%} (real {real[cls]:.0%})"
                + (f", mostly read as {gen['most_confused_with'][cls][0]}" if cls in gen["most_confused_with"] else "")
                for acc, cls in rows
            )
            print(f"{head} [{split}] weakest classes: {worst}")
            for column, groups in info.get("by", {}).items():
                rows = sorted(groups.items(), key=lambda kv: kv[1]["generated"])[:3]
                worst = "; ".join(f"{g} {v['generated']:.0%} (real {v['real']:.0%}, n={v['n']})"
                                  for g, v in rows)
                print(f"{head} [{split}] weakest by {column}: {worst}")
    for name, reason in report["skipped"].items():
        print(f"skipped {name}: {reason}")
    return 0
