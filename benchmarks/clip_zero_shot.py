"""How well a CLIP's image tower tells the catalogue's categories apart on real images (zero-shot).

    python benchmarks/clip_zero_shot.py --clip_model runs/clip-32
    python benchmarks/clip_zero_shot.py --clip_model runs/clip-32-cont --split test,test_unseen_pairs
    python benchmarks/clip_zero_shot.py --clip_model runs/clip-32-cont2 --pipeline pipelines/prodimg-fashion-32

CLIP guidance (``train_product_gan.py --clip_guidance_model``) can only teach the generator what the
guidance CLIP's image tower sees. For each real image this scores ten captions that differ only in
the category ("<colour> <pattern> <category>", with the row's own colour and pattern and each
category's first name) and counts the image as right when its own category scores highest. Prints
the accuracy per split, overall and per category, and the most frequent confusion of each category.

With ``--pipeline`` it reads that pipeline's images of the rows' captions instead (row ``i`` with seed
``i``, the images ``prodimg eval`` makes): a second judge of generated categories, of another family
than the attribute classifier, for a generator trained against a classifier (``--classifier_guidance_model``).
"""

from __future__ import annotations

import argparse
import json

import datasets
import numpy as np
import torch
import torch.nn.functional as F

from prodimg.data.captions import CATEGORY_NAMES, PATTERN_ADJECTIVES
from prodimg.evaluation.clip import load_clip_judge
from prodimg.metrics.clip_score import clip_preprocess, projected_features


def caption(category: str, color: str, pattern: str) -> str:
    adjective = next(a for a in PATTERN_ADJECTIVES[pattern] if a) if pattern != "solid" else ""
    return " ".join(w for w in (color, adjective, category) if w)


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--clip_model", required=True, help="a CLIP folder, a train_clip.py output or a Hub id"
    )
    parser.add_argument("--dataset", default="data/fashion-catalog-32")
    parser.add_argument("--split", default="test", help="comma-separated splits")
    parser.add_argument("--num_images", type=int, default=3000, help="first rows of each split")
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--pipeline", default=None, help="read this pipeline's images of the captions instead")
    args = parser.parse_args()
    pipeline = None
    if args.pipeline:
        from prodimg import ProductImagePipeline

        pipeline = ProductImagePipeline.from_pretrained(args.pipeline)
        pipeline.set_progress_bar_config(disable=True)

    judge = load_clip_judge(args.clip_model)
    model, tokenizer = judge.model, judge.tokenizer
    ds = datasets.load_from_disk(args.dataset)
    features = ds[args.split.split(",")[0]].features
    colors, patterns = features["color"].names, features["pattern"].names
    # Text embeddings of every (colour, pattern, category) caption, indexed [colour, pattern, category].
    texts = [caption(c, col, p) for col in colors for p in patterns for c in CATEGORY_NAMES]
    tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    text = F.normalize(projected_features(model.get_text_features(**tokens)), dim=-1)
    text = text.view(len(colors), len(patterns), len(CATEGORY_NAMES), -1)

    report = {"clip_model": args.clip_model, "pipeline": args.pipeline, "captions": "<colour> <pattern> <category>",
              "splits": {}}
    for split in args.split.split(","):
        rows = ds[split].select(range(min(args.num_images, len(ds[split]))))
        if pipeline is not None:
            from prodimg.evaluation.evaluate import generate_for_captions

            generated, _ = generate_for_captions(pipeline, rows["text"], 64, 0)
        predicted = []
        for i in range(0, len(rows), args.batch_size):
            batch = rows[i : i + args.batch_size]
            if pipeline is None:
                images = np.stack([np.asarray(im.convert("RGB")) for im in batch["image"]])
            else:
                images = generated[i : i + args.batch_size]
            pixels = clip_preprocess(images, judge.image_size, judge.image_mean, judge.image_std)
            image = F.normalize(projected_features(model.get_image_features(pixel_values=pixels)), dim=-1)
            candidates = text[torch.tensor(batch["color"]), torch.tensor(batch["pattern"])]  # (B, 10, D)
            predicted.append(torch.einsum("bd,bkd->bk", image, candidates).argmax(-1))
        predicted, truth = torch.cat(predicted), torch.tensor(rows["category"])
        per_class = {}
        for k, name in enumerate(CATEGORY_NAMES):
            mask = truth == k
            if mask.any():
                wrong = predicted[mask & (predicted != k)]
                confused = CATEGORY_NAMES[int(wrong.mode().values)] if len(wrong) else None
                per_class[name] = {
                    "accuracy": round(float((predicted[mask] == k).float().mean()), 4),
                    "n": int(mask.sum()),
                    "most_read_as": confused,
                }
        accuracy = float((predicted == truth).float().mean())
        report["splits"][split] = {"accuracy": round(accuracy, 4), "n": len(rows), "per_class": per_class}
        what = f"images by {args.pipeline}" if pipeline is not None else "real images"
        print(f"{split}: zero-shot category accuracy {accuracy:.1%} on {len(rows)} {what}")
        for name, r in per_class.items():
            print(f"  {name:10s} {r['accuracy']:6.1%}  (n={r['n']}, most read as {r['most_read_as']})")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
