"""Intra-prompt diversity: do several seeds of one prompt give visibly different images?

``diversity`` is the mean pairwise distance between images that share a group (the images one
prompt gave with different seeds), averaged over groups. The distance is the mean absolute
difference of the two images' pixels in [0, 1] (0: identical; two unrelated catalogue photos on a
white backdrop are typically 0.1 to 0.3 apart), so the figure needs no extra model and means the
same on any machine.

With ``ctx.real_images`` and ``ctx.real_attributes["group"]`` (e.g. real photos grouped by their
category, colour and pattern), the same statistic over real images is reported as
``diversity_real``, and ``diversity_ratio`` = generated / real: about 1 when one prompt varies as
much as the real catalogue does for the same attributes, near 0 when the seeds collapse to one image.

Keys: ``diversity``, ``diversity_groups``, ``diversity_min_pair`` (the closest pair over all groups:
a value near 0 means some seeds gave near-identical images) and, with the real groups,
``diversity_real``, ``diversity_real_groups``, ``diversity_ratio``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import Metric, register_metric
from .context import EvalContext


def grouped_pairwise_distances(images: np.ndarray, groups: Sequence[Any], max_per_group: int = 8) -> list[np.ndarray]:
    """For each group with at least two images (the first ``max_per_group`` of it), the distances of all its
    pairs: mean absolute pixel difference of uint8 (N, H, W, C) images, scaled to [0, 1]."""
    if len(groups) != len(images):
        raise ValueError(f"{len(groups)} group labels for {len(images)} images")
    if max_per_group < 2:
        raise ValueError(f"max_per_group must be >= 2, got {max_per_group}")
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out = []
    for idx in members.values():
        idx = idx[:max_per_group]
        if len(idx) < 2:
            continue
        x = images[idx].reshape(len(idx), -1).astype(np.float32) / 255.0
        d = np.abs(x[:, None, :] - x[None, :, :]).mean(axis=2)
        out.append(d[np.triu_indices(len(idx), k=1)])
    return out


@register_metric("diversity")
class Diversity(Metric):
    """Mean pairwise pixel distance within groups of generated images (one group per prompt).

    Args:
        max_per_group: images used per group (the first ones); the goal's figure uses 8 seeds.
    """

    def __init__(self, max_per_group: int = 8):
        if max_per_group < 2:
            raise ValueError(f"max_per_group must be >= 2, got {max_per_group}")
        self.max_per_group = max_per_group

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        images = ctx.require("generated_images", self.name)
        if "group" not in ctx.attributes:
            raise ValueError("metric 'diversity' needs `EvalContext.attributes['group']` (the prompt of each image)")
        per_group = grouped_pairwise_distances(images, list(ctx.attributes["group"]), self.max_per_group)
        if not per_group:
            raise ValueError("metric 'diversity' needs at least one group with two or more generated images")
        results = {
            "diversity": float(np.mean([d.mean() for d in per_group])),
            "diversity_groups": float(len(per_group)),
            "diversity_min_pair": float(min(d.min() for d in per_group)),
        }
        real_groups = ctx.real_attributes.get("group")
        if ctx.real_images is not None and real_groups is not None:
            real = grouped_pairwise_distances(ctx.real_images, list(real_groups), self.max_per_group)
            if real:
                results["diversity_real"] = float(np.mean([d.mean() for d in real]))
                results["diversity_real_groups"] = float(len(real))
                results["diversity_ratio"] = results["diversity"] / max(results["diversity_real"], 1e-12)
        return results
