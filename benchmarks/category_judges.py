"""Category accuracy of a pipeline's images by several attribute classifiers, and by the judge on blurred images.

    python benchmarks/category_judges.py --pipeline pipelines/prodimg-fashion-32 --classifier runs/teacher/cls-s1

A generator trained against one classifier (``train_product_gan.py --classifier_guidance_model``) can learn
features that classifier reads and a real product does not show. This reads the same generated images (row
``i`` of each split with seed ``i``, as ``prodimg eval`` makes them) with ``prodimg eval``'s judge, with each
``--classifier`` (such as the guidance teacher), and with the judge after a 3 x 3 box blur: a pixel-level
pattern that pleases one CNN rarely survives the blur, a garment's shape does. Compare a guided pipeline with
its start; ``benchmarks/clip_zero_shot.py --pipeline`` gives a judge of another family.
"""

from __future__ import annotations

import argparse
import json

import datasets
import torch
import torch.nn.functional as F

from prodimg import ProductImagePipeline
from prodimg.evaluation.classifier import load_attribute_classifier
from prodimg.evaluation.evaluate import generate_for_captions


def box_blur(x: torch.Tensor) -> torch.Tensor:
    """3 x 3 mean filter, edges replicated; (N, C, H, W) -> same shape."""
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default="pipelines/prodimg-fashion-32")
    parser.add_argument("--dataset", default="data/fashion-catalog-32")
    parser.add_argument("--split", default="test,test_unseen_pairs", help="comma-separated splits")
    parser.add_argument("--num_images", type=int, default=1000, help="first rows of each split")
    parser.add_argument("--classifier", action="append", default=[], help="another attribute classifier folder")
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()

    pipe = ProductImagePipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    judges = [("judge", load_attribute_classifier(None), False)]
    judges += [(path, load_attribute_classifier(path), False) for path in args.classifier]
    judges.append(("judge, blurred", judges[0][1], True))
    data = datasets.load_from_disk(args.dataset)
    report = {"pipeline": args.pipeline, "num_images": args.num_images, "splits": {}}
    for split in args.split.split(","):
        rows = data[split].select(range(min(args.num_images, len(data[split]))))
        images, _ = generate_for_captions(pipe, rows["text"], args.batch_size, 0)
        truth = torch.tensor(rows["category"])
        names = data[split].features["category"].names
        result = {}
        for name, model, blur in judges:
            index = {label: k for k, label in enumerate(model.label_names("category"))}
            to_model = torch.tensor([index[label] for label in names])
            x = model.preprocess(images)
            predicted = model(box_blur(x) if blur else x).logits["category"].argmax(1)
            result[name] = round(float((predicted == to_model[truth]).float().mean()), 4)
        report["splits"][split] = result
        print(f"{split} ({len(rows)} images): " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in result.items()))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
