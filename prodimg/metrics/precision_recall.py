"""Improved precision and recall (Kynkaanniemi et al. 2019) on Inception pool features.

Each set's manifold is the union of balls around its samples, the radius of a sample being the
distance to its k-th nearest neighbour in the same set (k = 3; the sample itself excluded).
Precision is the fraction of generated samples inside the real manifold (quality), recall the
fraction of real samples inside the generated manifold (coverage). Distances are computed in
row x column blocks with ``torch.cdist`` so memory stays bounded, as in the StyleGAN code.
"""

from __future__ import annotations

import numpy as np
import torch

from . import Metric, register_metric
from .context import EvalContext


def _blocks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


@torch.inference_mode()
def knn_radii(features: torch.Tensor, k: int, block_size: int = 4096) -> torch.Tensor:
    """Distance from each row of ``features`` to its k-th nearest other row."""
    n = len(features)
    if not 1 <= k < n:
        raise ValueError(f"`k` must be in [1, {n - 1}] for {n} samples, got {k}")
    radii = torch.empty(n, dtype=features.dtype)
    for r0, r1 in _blocks(n, block_size):
        dist = torch.cat(
            [torch.cdist(features[r0:r1], features[c0:c1]) for c0, c1 in _blocks(n, block_size)], dim=1
        )
        # The k+1-th smallest, because each row's own distance (0) is among them.
        radii[r0:r1] = dist.kthvalue(k + 1, dim=1).values
    return radii


@torch.inference_mode()
def manifold_coverage(
    manifold: torch.Tensor, radii: torch.Tensor, probes: torch.Tensor, block_size: int = 4096
) -> float:
    """Fraction of ``probes`` within ``radii[j]`` of some ``manifold[j]``."""
    inside = torch.zeros(len(probes), dtype=torch.bool)
    for r0, r1 in _blocks(len(probes), block_size):
        for c0, c1 in _blocks(len(manifold), block_size):
            dist = torch.cdist(probes[r0:r1], manifold[c0:c1])
            inside[r0:r1] |= (dist <= radii[c0:c1].unsqueeze(0)).any(dim=1)
    return float(inside.float().mean())


def precision_recall(
    real_features: np.ndarray, generated_features: np.ndarray, k: int = 3, block_size: int = 4096
) -> tuple[float, float]:
    """(precision, recall) of generated vs real features, both (N, D)."""
    real = torch.as_tensor(np.asarray(real_features, np.float32))
    fake = torch.as_tensor(np.asarray(generated_features, np.float32))
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"feature sets must be (N, D) with the same D, got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    precision = manifold_coverage(real, knn_radii(real, k, block_size), fake, block_size)
    recall = manifold_coverage(fake, knn_radii(fake, k, block_size), real, block_size)
    return precision, recall


@register_metric("precision_recall")
class PrecisionRecall(Metric):
    """Improved precision & recall with k-NN manifolds. Returns ``{"precision", "recall"}``."""

    def __init__(self, k: int = 3, block_size: int = 4096):
        self.k = k
        self.block_size = block_size

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        real = ctx.inception_features("real")
        precision, recall = precision_recall(
            real, ctx.inception_features("generated"), self.k, self.block_size
        )
        return {"precision": precision, "recall": recall}
