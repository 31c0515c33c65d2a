"""How much of a pipeline's FID is image sharpness? FID of its images sharpened or blurred after sampling.

    python benchmarks/fid_sharpness.py --pipeline pipelines/prodimg-fashion-32 --num_images 1000

Generates the first ``--num_images`` captions of the split once (row i with seed i, as ``prodimg eval``
does), then scores them as they are and filtered by ``x + a (x - blur(x))`` for each ``--amounts`` a
(a > 0 sharpens, a < 0 blurs; ``blur`` is the 3x3 binomial kernel). Prints one JSON line per variant:
FID, precision and recall against the split's real images (their Inception features come from, and go
to, the same cache as ``prodimg eval``'s), and the mean absolute Laplacian (high-frequency energy, on
[0, 1] pixels) of the images scored, beside the real images'. A diagnostic, not a sampling option:
if sharpening moved FID far, the generator's missing detail would be the gap to chase.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F


def _depthwise(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    k = kernel.to(x.dtype).view(1, 1, 3, 3).repeat(x.shape[1], 1, 1, 1)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1])


BINOMIAL = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def _to_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def unsharp(images: np.ndarray, amount: float) -> np.ndarray:
    """uint8 NHWC images filtered by ``x + amount * (x - blur(x))``, clipped and rounded back to uint8."""
    x = _to_float(images)
    out = (x + amount * (x - _depthwise(x, BINOMIAL))).clamp(0, 1)
    return np.rint(out.permute(0, 2, 3, 1).numpy() * 255.0).astype(np.uint8)


def laplacian_energy(images: np.ndarray) -> float:
    return float(_depthwise(_to_float(images), LAPLACIAN).abs().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default="pipelines/prodimg-fashion-32")
    parser.add_argument("--dataset", default="data/fashion-catalog-32")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num_images", type=int, default=1000)
    parser.add_argument("--amounts", type=float, nargs="+", default=[0.0, 0.5, 1.0, -0.5])
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()

    from prodimg.backends import load_pipeline
    from prodimg.evaluation.data import load_labeled_split
    from prodimg.evaluation.evaluate import dataset_identity, generate_for_captions
    from prodimg.metrics import EvalContext, RealStatsKey, get_metric
    from prodimg.metrics.inception import InceptionFeatureExtractor

    pipe = load_pipeline(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    resolution = int(pipe.generator.config.sample_size)
    data = load_labeled_split(args.dataset, args.split, resolution, max_samples=args.num_images)
    generated, _ = generate_for_captions(pipe, data.captions, args.batch_size, seed=0)
    extractor = InceptionFeatureExtractor(device="cpu", batch_size=args.batch_size)
    key = RealStatsKey(dataset=dataset_identity(args.dataset), split=args.split, resolution=resolution,
                       num_images=len(data))
    real_energy = laplacian_energy(data.images)
    for amount in args.amounts:
        t0 = time.perf_counter()
        images = generated if amount == 0 else unsharp(generated, amount)
        ctx = EvalContext(generated_images=images, real_images=data.images, real_stats_key=key,
                          feature_extractor=extractor, batch_size=args.batch_size, seed=0)
        row = {"amount": amount, "num_images": len(images)}
        for metric in ("fid", "precision_recall"):
            row.update({k: round(v, 4) for k, v in get_metric(metric).compute(ctx).items()})
        row.update({"laplacian": round(laplacian_energy(images), 4), "laplacian_real": round(real_energy, 4),
                    "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
