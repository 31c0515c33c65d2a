"""The evaluation context shared by all metrics of one run, and the on-disk real-feature cache."""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..utils import atomic_write_bytes
from .inception import check_uint8_images

INCEPTION = "inception"


def default_cache_dir() -> Path:
    """``$PRODIMG_METRICS_CACHE``, else ``~/.cache/prodimg/metrics``."""
    env = os.environ.get("PRODIMG_METRICS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "prodimg" / "metrics"


@dataclass(frozen=True)
class RealStatsKey:
    """Identifies a set of real images whose features are cached on disk.

    ``resolution`` is the side of the images fed to the feature extractor (before its own resize)
    and ``num_images`` how many were used; both are checked against ``EvalContext.real_images``
    when the cache is filled.
    """

    dataset: str
    split: str
    resolution: int
    num_images: int

    def filename(self, feature_id: str) -> str:
        def clean(s: str) -> str:
            return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "_"

        return (
            f"{clean(self.dataset)}__{clean(self.split)}__res{int(self.resolution)}"
            f"__n{int(self.num_images)}__{clean(feature_id)}.npz"
        )


def save_real_stats(path: str | os.PathLike, features: np.ndarray, metadata: dict[str, Any]) -> None:
    """Atomically write features (float32) with their mean and covariance (float64) to ``path``."""
    features = np.asarray(features, dtype=np.float32)
    mu, sigma = feature_statistics(features)
    buf = io.BytesIO()
    np.savez(
        buf, features=features, mu=mu, sigma=sigma, metadata=np.array(json.dumps(metadata, sort_keys=True))
    )
    atomic_write_bytes(path, buf.getvalue())


def load_real_stats(path: str | os.PathLike, expected_metadata: dict[str, Any]) -> dict[str, np.ndarray]:
    """Read a file written by :func:`save_real_stats`; refuse one whose metadata differs."""
    try:
        with np.load(path, allow_pickle=False) as data:
            stats = {k: data[k] for k in ("features", "mu", "sigma")}
            metadata = json.loads(str(data["metadata"]))
    except Exception as e:
        raise ValueError(
            f"the real-feature cache {str(path)!r} is unreadable ({e}); delete it to recompute"
        ) from e
    if metadata != expected_metadata:
        raise ValueError(
            f"the real-feature cache {str(path)!r} was written for {metadata}, expected {expected_metadata}; "
            "delete it to recompute"
        )
    return stats


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, ddof=1) covariance of ``features`` (N, D), in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"`features` must have shape (N >= 2, D), got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


@dataclass
class EvalContext:
    """Everything the metrics of one evaluation run read; metrics add cached features to it.

    Data (per generated image ``i``, all columns aligned with ``generated_images``):

    - ``generated_images``: uint8 (N, H, W, 3) RGB.
    - ``real_images``: uint8 (M, H', W', 3) RGB; may be ``None`` when the real features come from
      ``features`` or from the disk cache.
    - ``prompts``: N strings (CLIP score).
    - ``attributes``: optional columns of length N, e.g. ``"color"`` (names or ClassLabel ids),
      ``"category"``, ``"subset"`` (e.g. ``"seen"`` / ``"heldout"`` composition pairs).
    - ``real_attributes``: optional columns of length M, aligned with ``real_images`` (e.g.
      ``"group"`` for the diversity metric's real reference).

    Cached features, keyed ``"<extractor>/<which>"`` (``"inception/generated"``,
    ``"inception/real"``): filled on first use; a caller may pre-fill them (e.g. features
    computed while streaming images) and leave the images ``None``.

    Real-feature disk cache: when ``real_stats_key`` is set, real Inception features are read
    from / atomically written to ``cache_dir`` (default :func:`default_cache_dir`).

    Judges: ``feature_extractor`` (an ``InceptionFeatureExtractor``, built lazily),
    ``clip_model`` + ``clip_tokenizer`` (a transformers ``CLIPModel`` / ``CLIPTokenizer``), and
    ``category_classifier``: a callable mapping uint8 (B, H, W, 3) images to B labels in the
    vocabulary of ``attributes["category"]``.
    """

    generated_images: np.ndarray | None = None
    real_images: np.ndarray | None = None
    prompts: Sequence[str] | None = None
    attributes: dict[str, Sequence[Any]] = field(default_factory=dict)
    real_attributes: dict[str, Sequence[Any]] = field(default_factory=dict)
    features: dict[str, np.ndarray] = field(default_factory=dict)
    real_stats_key: RealStatsKey | None = None
    cache_dir: str | os.PathLike | None = None
    feature_extractor: Any | None = None
    clip_model: Any | None = None
    clip_tokenizer: Any | None = None
    category_classifier: Callable[[np.ndarray], Sequence[Any]] | None = None
    device: str | torch.device = "cpu"
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.generated_images is not None:
            check_uint8_images(self.generated_images, "generated_images")
        if self.real_images is not None:
            check_uint8_images(self.real_images, "real_images")
        if self.prompts is not None:
            if isinstance(self.prompts, str) or not all(isinstance(p, str) for p in self.prompts):
                raise TypeError("`prompts` must be a sequence of strings")
            self._check_column_length("prompts", self.prompts)
        for name, column in self.attributes.items():
            self._check_column_length(f"attributes[{name!r}]", column)
        if self.real_attributes and self.real_images is None:
            raise ValueError("`real_attributes` needs `real_images` (its columns are aligned with them)")
        for name, column in self.real_attributes.items():
            if len(column) != len(self.real_images):
                raise ValueError(
                    f"`real_attributes[{name!r}]` has {len(column)} entries but there are {len(self.real_images)} real images"
                )

    def _check_column_length(self, argument: str, column: Sequence[Any]) -> None:
        n = self.num_generated
        if n is not None and len(column) != n:
            raise ValueError(f"`{argument}` has {len(column)} entries but there are {n} generated images")

    @property
    def num_generated(self) -> int | None:
        if self.generated_images is not None:
            return len(self.generated_images)
        feats = self.features.get(f"{INCEPTION}/generated")
        return None if feats is None else len(feats)

    def require(self, argument: str, metric: str) -> Any:
        """Return ``getattr(self, argument)`` or raise a ValueError saying which metric needs it."""
        value = getattr(self, argument)
        if value is None:
            raise ValueError(f"metric {metric!r} needs `EvalContext.{argument}`, which is None")
        return value

    # ---- Inception features -----------------------------------------------------------------

    def get_feature_extractor(self):
        if self.feature_extractor is None:
            from .inception import InceptionFeatureExtractor

            self.feature_extractor = InceptionFeatureExtractor(device=self.device, batch_size=self.batch_size)
        return self.feature_extractor

    def inception_features(self, which: Literal["generated", "real"]) -> np.ndarray:
        """(N, 2048) float32 Inception features of the generated or the real images, computed once."""
        if which not in ("generated", "real"):
            raise ValueError(f"`which` must be 'generated' or 'real', got {which!r}")
        key = f"{INCEPTION}/{which}"
        if key in self.features:
            return self.features[key]
        if which == "real" and self.real_stats_key is not None:
            self._load_or_fill_real_cache()
            return self.features[key]
        images = self.generated_images if which == "generated" else self.real_images
        if images is None:
            raise ValueError(f"no `{which}_images` and no cached features {key!r} in the EvalContext")
        self.features[key] = self.get_feature_extractor()(images)
        return self.features[key]

    def inception_statistics(self, which: Literal["generated", "real"]) -> tuple[np.ndarray, np.ndarray]:
        """Mean (D,) and covariance (D, D) of :meth:`inception_features`, float64, computed once."""
        key = f"{INCEPTION}/{which}"
        if f"{key}:mu" not in self.features:
            mu, sigma = feature_statistics(self.inception_features(which))
            self.features[f"{key}:mu"], self.features[f"{key}:sigma"] = mu, sigma
        return self.features[f"{key}:mu"], self.features[f"{key}:sigma"]

    def real_cache_path(self) -> Path:
        key = self.require("real_stats_key", "real feature cache")
        from .inception import INCEPTION_FEATURE_ID

        root = Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir()
        return root / key.filename(INCEPTION_FEATURE_ID)

    def _load_or_fill_real_cache(self) -> None:
        from .inception import INCEPTION_FEATURE_ID

        key = self.real_stats_key
        metadata = {
            "dataset": key.dataset,
            "split": key.split,
            "resolution": int(key.resolution),
            "num_images": int(key.num_images),
            "feature_id": INCEPTION_FEATURE_ID,
        }
        path = self.real_cache_path()
        if path.is_file():
            stats = load_real_stats(path, metadata)
        else:
            images = self.real_images
            if images is None:
                raise ValueError(f"no real-feature cache at {str(path)!r} and `real_images` is None")
            if len(images) != key.num_images or images.shape[1:3] != (key.resolution, key.resolution):
                raise ValueError(
                    f"`real_images` has shape {images.shape} but `real_stats_key` says "
                    f"{key.num_images} images of {key.resolution}x{key.resolution}"
                )
            save_real_stats(path, self.get_feature_extractor()(images), metadata)
            stats = load_real_stats(path, metadata)
        base = f"{INCEPTION}/real"
        self.features[base] = stats["features"]
        self.features[f"{base}:mu"] = stats["mu"]
        self.features[f"{base}:sigma"] = stats["sigma"]
