"""CLIP score (Hessel et al. 2021): ``100 * max(cos(image, text), 0)`` averaged over image/prompt pairs.

The judge is any transformers ``CLIPModel`` with its ``CLIPTokenizer`` (e.g. our domain CLIP, or
``openai/clip-vit-base-patch32`` where the Hub is reachable). Images are preprocessed without
``CLIPImageProcessor`` (nothing to download) and without torchvision: the shorter side is resized
with bilinear interpolation (antialiased when shrinking) to the model's
``vision_config.image_size``, non-square images are centre-cropped, and pixels are normalised
with CLIP's mean/std (``transformers.utils.constants.OPENAI_CLIP_MEAN/STD`` unless given).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import Metric, register_metric
from .context import EvalContext
from .inception import check_uint8_images

logger = logging.getLogger(__name__)


def projected_features(output) -> torch.Tensor:
    """The projected embedding from ``CLIPModel.get_image_features`` / ``get_text_features``."""
    # transformers >= 5 returns a BaseModelOutputWithPooling whose pooler_output is the projection.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def clip_preprocess(
    images: np.ndarray,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, image_size, image_size)."""
    check_uint8_images(images)
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 255.0
    return clip_pixels(x, image_size, mean, std).to(dtype)


def clip_pixels(
    x: torch.Tensor, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Float images in [0, 1], (N, 3, H, W) -> CLIP's input (N, 3, image_size, image_size); differentiable.

    The shorter side is resized to ``image_size`` (bilinear, antialiased when shrinking), the longer
    one centre-cropped, and pixels normalised with ``mean`` / ``std``.
    """
    h, w = x.shape[-2:]
    scale = image_size / min(h, w)
    new_h, new_w = max(image_size, round(h * scale)), max(image_size, round(w * scale))
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=scale < 1)
    top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
    x = x[..., top : top + image_size, left : left + image_size]
    mean_t = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


@torch.inference_mode()
def clip_score(
    model,
    tokenizer,
    images: np.ndarray,
    prompts: Sequence[str],
    batch_size: int = 32,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
) -> np.ndarray:
    """Per-pair CLIP scores ``100 * max(cos, 0)`` (float64 array of length N)."""
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    check_uint8_images(images)
    if len(prompts) != len(images):
        raise ValueError(f"`prompts` has {len(prompts)} entries but there are {len(images)} images")
    mean = OPENAI_CLIP_MEAN if image_mean is None else image_mean
    std = OPENAI_CLIP_STD if image_std is None else image_std
    image_size = int(model.config.vision_config.image_size)
    max_length = int(model.config.text_config.max_position_embeddings)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    was_training = model.training
    model.eval()
    scores = []
    try:
        for start in range(0, len(images), batch_size):
            batch_prompts = list(prompts[start : start + batch_size])
            lengths = [len(ids) for ids in tokenizer(batch_prompts)["input_ids"]]
            if max(lengths) > max_length:
                logger.warning(
                    "%d prompt(s) longer than %d tokens were truncated for CLIP score",
                    sum(n > max_length for n in lengths),
                    max_length,
                )
            text = tokenizer(
                batch_prompts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            ).to(device)
            pixels = clip_preprocess(images[start : start + batch_size], image_size, mean, std, device, dtype)
            img_emb = projected_features(model.get_image_features(pixel_values=pixels)).float()
            txt_emb = projected_features(
                model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
            ).float()
            cos = F.cosine_similarity(img_emb, txt_emb, dim=-1)
            scores.append((100.0 * cos.clamp(min=0)).double().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(scores) if scores else np.zeros(0)


@register_metric("clip_score")
class CLIPScore(Metric):
    """Mean CLIP score of generated images against their prompts. Returns ``{"clip_score"}``.

    Needs ``ctx.clip_model``, ``ctx.clip_tokenizer``, ``ctx.generated_images``, ``ctx.prompts``.
    ``image_mean`` / ``image_std`` override CLIP's normalisation for a judge trained with other values.
    """

    def __init__(self, image_mean: Sequence[float] | None = None, image_std: Sequence[float] | None = None):
        self.image_mean = image_mean
        self.image_std = image_std

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        scores = clip_score(
            ctx.require("clip_model", self.name),
            ctx.require("clip_tokenizer", self.name),
            ctx.require("generated_images", self.name),
            ctx.require("prompts", self.name),
            batch_size=ctx.batch_size,
            image_mean=self.image_mean,
            image_std=self.image_std,
        )
        return {"clip_score": float(scores.mean())}
