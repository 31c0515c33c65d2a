"""Attribute accuracy when catalogue captions carry words the catalogue never uses.

    python benchmarks/prompt_robustness.py --pipeline pipelines/prodimg-fashion-32 --num_images 1500

The default pipeline's text encoder was trained on the fashion catalogue's captions only: the tokens
of those captions (about a hundred) are trained, the other ~49,300 rows of the CLIP vocabulary are
not. Shop descriptions carry material and brand words ("silk", "luxury", "designer": none of them in
any catalogue caption). This generates the first ``--num_images`` test captions as they are and
with such words added (row i with seed i, as ``prodimg eval`` does) and prints the colour and
category accuracy of each variant (one JSON line each).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

VARIANTS = {
    "catalogue caption": "{}",
    "silk + caption": "silk {}",
    "caption + made of soft italian silk": "{}, made of soft italian silk",
    "luxury designer + caption": "luxury designer {}",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default="pipelines/prodimg-fashion-32")
    parser.add_argument("--dataset", default="data/fashion-catalog-32")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num_images", type=int, default=1500)
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()

    from prodimg.backends import load_pipeline
    from prodimg.evaluation.data import load_labeled_split
    from prodimg.evaluation.evaluate import evaluate, load_judges

    pipe = load_pipeline(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    resolution = int(pipe.generator.config.sample_size)
    base = load_labeled_split(args.dataset, args.split, resolution, max_samples=args.num_images)
    metrics = ["color_accuracy", "category_accuracy"]
    judges = load_judges(metrics)
    for name, template in VARIANTS.items():
        split = dataclasses.replace(base, captions=[template.format(c) for c in base.captions])
        report = evaluate(pipe, {args.split: split}, dataset_id=args.dataset, batch_size=args.batch_size,
                          metrics=metrics, **judges)
        row = {"variant": name, "num_images": len(split), "example": split.captions[0]}
        row.update({m: round(100 * report["metrics"][m], 1) for m in metrics})
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
