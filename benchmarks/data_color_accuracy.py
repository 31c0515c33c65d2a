"""Accuracy of ``prodimg.data.measure_color`` on rendered catalog items.

    python benchmarks/data_color_accuracy.py [--n 2000] [--resolutions 32 64]

Renders ``n`` Fashion-MNIST *test* garments with the catalog recipe (colours uniform over all 11,
patterns uniform, seeded), measures each item's colour from its pixels and prints the accuracy,
per-colour accuracy and the confusions. Needs Debian's dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prodimg.data.captions import CATEGORY_NAMES
from prodimg.data.catalog import render_items, sample_item_params
from prodimg.data.color_measure import measure_color
from prodimg.data.colors import COLOR_NAMES
from prodimg.data.fashion_mnist import load_fashion_mnist
from prodimg.data.render import PATTERN_NAMES


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    args = parser.parse_args()
    images, labels = load_fashion_mnist("test")
    rng = np.random.default_rng(args.seed)
    idx = rng.permutation(len(images))[: args.n]
    colors = rng.integers(0, len(COLOR_NAMES), args.n)
    params = sample_item_params(rng, labels[idx], colors)
    for res in args.resolutions:
        rendered = render_items(images[idx], params, res)
        t0 = time.perf_counter()
        pred = [measure_color(im) for im in rendered]
        ms = (time.perf_counter() - t0) / args.n * 1e3
        truth = [COLOR_NAMES[c] for c in colors]
        ok = np.array([p == t for p, t in zip(pred, truth)])
        print(f"{res}px: accuracy {ok.mean():.2%} on {args.n} items ({ms:.1f} ms/item)")
        per = {name: ok[colors == i].mean() for i, name in enumerate(COLOR_NAMES)}
        print("  per colour: " + ", ".join(f"{k} {v:.1%}" for k, v in per.items()))
        confusions = Counter(
            (t, p, PATTERN_NAMES[params.pattern[i]], CATEGORY_NAMES[params.category[i]])
            for i, (p, t) in enumerate(zip(pred, truth))
            if p != t
        )
        for (t, p, pat, cat), n in confusions.most_common(8):
            print(f"  {t} -> {p}: {n} ({pat} {cat})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
