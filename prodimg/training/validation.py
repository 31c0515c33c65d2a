"""Validation during training: a seeded image grid for fixed prompts, and a small FID (via prodimg.metrics)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch

logger = logging.getLogger(__name__)


def image_grid(images: Sequence[PIL.Image.Image], rows: int, cols: int) -> PIL.Image.Image:
    from diffusers.utils import make_image_grid

    return make_image_grid(list(images), rows=rows, cols=cols)


@torch.no_grad()
def generate_grid(
    pipeline,
    prompts: Sequence[str],
    images_per_prompt: int,
    seed: int,
    guidance_scale: float = 1.0,
    num_inference_steps: int | None = None,
) -> PIL.Image.Image:
    """One row per prompt, ``images_per_prompt`` columns; image ``i`` uses seed ``seed + i``."""
    n = len(prompts) * images_per_prompt
    generators = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    images = pipeline(
        list(prompts),
        num_images_per_prompt=images_per_prompt,
        generator=generators,
        guidance_scale=guidance_scale,
        num_inference_steps=num_inference_steps,
        output_type="pil",
    ).images
    return image_grid(images, rows=len(prompts), cols=images_per_prompt)


def to_uint8_nhwc(pixel_values: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    x = ((pixel_values.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def fid_unavailable_reason() -> str | None:
    """``None`` if prodimg.metrics can compute FID here, else why not (logged, never raised)."""
    try:
        from prodimg.metrics import list_metrics
        from prodimg.metrics.inception import find_inception_weights
    except Exception as err:  # noqa: BLE001 - the metrics package is optional for training
        return f"prodimg.metrics is not importable ({type(err).__name__}: {err})"
    if "fid" not in list_metrics():
        return "prodimg.metrics has no 'fid' metric"
    try:
        find_inception_weights()
    except Exception as err:  # noqa: BLE001
        return str(err)
    return None


class FIDEvaluator:
    """FID of generated images against a fixed set of real validation images.

    The real images' Inception statistics are cached on disk by prodimg.metrics
    (``RealStatsKey``); the Inception network is loaded once and reused.
    """

    def __init__(
        self,
        real_images: np.ndarray,
        captions: Sequence[str],
        dataset_id: str,
        split: str,
        device: torch.device | str = "cpu",
        batch_size: int = 32,
        seed: int = 0,
    ):
        from prodimg.metrics import RealStatsKey

        if len(real_images) < 2:
            raise ValueError(f"FID needs at least 2 validation images, got {len(real_images)}")
        self.real_images = real_images
        self.captions = list(captions)
        self.key = RealStatsKey(
            dataset=dataset_id, split=split, resolution=int(real_images.shape[1]), num_images=len(real_images)
        )
        self.device, self.batch_size, self.seed = device, batch_size, seed
        self.feature_extractor: Any = None

    @torch.no_grad()
    def generate(self, pipeline, guidance_scale: float = 1.0) -> np.ndarray:
        out = []
        for start in range(0, len(self.captions), self.batch_size):
            prompts = self.captions[start : start + self.batch_size]
            gens = [torch.Generator().manual_seed(self.seed + start + i) for i in range(len(prompts))]
            images = pipeline(prompts, generator=gens, guidance_scale=guidance_scale, output_type="pt").images
            out.append(
                (images.float() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            )
        return np.concatenate(out)

    def __call__(self, pipeline, guidance_scale: float = 1.0) -> float:
        from prodimg.metrics import EvalContext, get_metric

        generated = self.generate(pipeline, guidance_scale)
        ctx = EvalContext(
            generated_images=generated,
            real_images=self.real_images,
            real_stats_key=self.key,
            feature_extractor=self.feature_extractor,
            device=self.device,
            batch_size=self.batch_size,
        )
        fid = get_metric("fid").compute(ctx)["fid"]
        self.feature_extractor = ctx.feature_extractor
        return float(fid)


class EarlyStopping:
    """Tracks the best validation score (lower is better); ``should_stop`` after ``patience`` validations
    without improvement (``patience=None`` never stops)."""

    def __init__(self, patience: int | None):
        self.patience = patience
        self.best: float | None = None
        self.best_step: int | None = None
        self.since_best = 0
        self.history: list[list[float]] = []

    def update(self, step: int, value: float) -> bool:
        """Record a score; return True if it is a new best."""
        self.history.append([int(step), float(value)])
        if self.best is None or value < self.best:
            self.best, self.best_step, self.since_best = float(value), int(step), 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.since_best >= self.patience

    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "best_step": self.best_step,
            "since_best": self.since_best,
            "history": self.history,
            "patience": self.patience,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step = state["best"], state["best_step"]
        self.since_best, self.history = int(state["since_best"]), [list(h) for h in state["history"]]
