"""Loading and saving a CLIP judge (a transformers ``CLIPModel`` + tokenizer + image normalisation).

One code path for every CLIP: a Hub id such as ``openai/clip-vit-base-patch32``, a local CLIP
folder, or the output folder of ``train_scripts/train_clip.py`` (whose full model lives in its
``clip/`` subfolder). Weights are read from safetensors only.

Image preprocessing is :func:`prodimg.metrics.clip_score.clip_preprocess` (resize the shorter
side to ``vision_config.image_size``, centre-crop, normalise). The normalisation constants come
from the model's ``preprocessor_config.json`` (``image_mean`` / ``image_std``, the
``CLIPImageProcessor`` fields) when it has one, else CLIP's own
(``transformers.utils.constants.OPENAI_CLIP_MEAN/STD``). Training (``prodimg.clip_training``)
and scoring (``prodimg.metrics.clip_score``) therefore normalise identically.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CLIP_SUBFOLDER = "clip"
PREPROCESSOR_CONFIG = "preprocessor_config.json"


@dataclass
class CLIPJudge:
    """A CLIP model with what it needs to score images: tokenizer and image normalisation."""

    model: Any  # transformers.CLIPModel
    tokenizer: Any  # transformers.CLIPTokenizer
    image_mean: list[float]
    image_std: list[float]
    source: str

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)


def default_image_normalization() -> tuple[list[float], list[float]]:
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    return list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD)


def clip_subfolder(path: str | os.PathLike) -> str:
    """``"clip"`` for a local folder holding a ``clip/`` model (a train_clip.py output), else ``""``."""
    sub = Path(path) / CLIP_SUBFOLDER
    return CLIP_SUBFOLDER if (sub / "config.json").is_file() else ""


def is_clip_location(path: str | os.PathLike) -> bool:
    """True for a local folder that holds a CLIP model (directly or in ``clip/``)."""
    path = Path(path)
    folder = path / clip_subfolder(path)
    config = folder / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == "clip"
    except (OSError, ValueError):
        return False


def _read_preprocessor_config(path: str, subfolder: str, **hub_kwargs) -> dict | None:
    if os.path.isdir(path):
        file = Path(path) / subfolder / PREPROCESSOR_CONFIG
        return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        file = hf_hub_download(path, PREPROCESSOR_CONFIG, subfolder=subfolder or None, **hub_kwargs)
    except Exception:  # noqa: BLE001 - no such file (or offline): CLIP's own constants
        return None
    with open(file, encoding="utf-8") as f:
        return json.load(f)


def image_normalization(path: str, subfolder: str = "", **hub_kwargs) -> tuple[list[float], list[float]]:
    """``(image_mean, image_std)`` of a CLIP location (its preprocessor config, else CLIP's defaults)."""
    mean, std = default_image_normalization()
    config = _read_preprocessor_config(str(path), subfolder, **hub_kwargs)
    if config:
        mean = [float(v) for v in config.get("image_mean", mean)]
        std = [float(v) for v in config.get("image_std", std)]
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"{path}: image_mean/image_std must be 3 values (std > 0), got {mean} / {std}")
    return mean, std


def load_clip_judge(
    path: str | os.PathLike,
    device: str = "cpu",
    revision: str | None = None,
    cache_dir: str | None = None,
) -> CLIPJudge:
    """A CLIP judge from a Hub id, a CLIP folder, or a ``train_clip.py`` output folder (its ``clip/``)."""
    from transformers import CLIPModel, CLIPTokenizer

    from ..text import load_clip_tokenizer

    path = str(path)
    local = os.path.isdir(path)
    sub = clip_subfolder(path) if local else ""
    kw = {"revision": revision, "cache_dir": cache_dir}
    try:
        model = CLIPModel.from_pretrained(path, subfolder=sub, use_safetensors=True, **kw)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{path!r} is not a CLIP model (folder, train_clip.py output or Hub id): {err}") from None
    try:
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder=sub, **kw)
    except (OSError, ValueError, TypeError):
        logger.info(f"No tokenizer at {path}; using the bundled CLIP tokenizer")
        tokenizer = load_clip_tokenizer()
    mean, std = image_normalization(path, sub, **kw)
    model.to(device).eval().requires_grad_(False)
    return CLIPJudge(model, tokenizer, mean, std, source=os.path.join(path, sub) if sub else path)


def save_clip_judge(
    directory: str | os.PathLike,
    model,
    tokenizer,
    image_mean: Sequence[float],
    image_std: Sequence[float],
) -> Path:
    """Write a self-contained CLIP folder: safetensors weights + config, tokenizer, preprocessor config.

    The preprocessor config uses ``CLIPImageProcessor``'s field names, so other tools read the
    same normalisation; the resize it describes is the shorter side to ``image_size`` + centre crop.
    """
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    size = int(model.config.vision_config.image_size)
    config = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": size},
        "resample": 2,  # bilinear, as clip_preprocess
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [float(v) for v in image_mean],
        "image_std": [float(v) for v in image_std],
        "do_convert_rgb": True,
    }
    (directory / PREPROCESSOR_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return directory
