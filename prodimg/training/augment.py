"""DiffAugment (Zhao et al., 2020) for the discriminator's inputs, applied identically to the images of a pair.

The discriminator judges a denoising pair ``(x_t, x_{t+1})``: both images must get the same colour
shift, translation and cutout, or the pair stops being a consistent denoising step. All random
parameters are drawn per sample from an explicit ``torch.Generator`` (reproducible and resumable),
and every operation is differentiable, so R1 can be taken through it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"color,translation,cutout"`` -> a tuple; ``""``/``None``/``"none"`` -> ``()``."""
    if policy is None:
        return ()
    items = policy.split(",") if isinstance(policy, str) else list(policy)
    items = [p.strip() for p in items if p.strip() and p.strip() != "none"]
    unknown = [p for p in items if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy {unknown}; choose from {', '.join(POLICIES)}")
    return tuple(items)


def _rand(b: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(b, 1, 1, 1, generator=generator, device=x.device, dtype=torch.float32).to(x.dtype)


def _color(x: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """Brightness, saturation, contrast; ``x`` is (B, n*C, H, W) holding ``n`` images per sample."""
    b, nc, h, w = x.shape
    c = nc // n
    x = x + (_rand(b, x, generator) - 0.5)
    v = x.view(b, n, c, h, w)
    mean = v.mean(dim=2, keepdim=True)
    v = (v - mean) * (_rand(b, x, generator) * 2).view(b, 1, 1, 1, 1) + mean
    mean = v.mean(dim=(2, 3, 4), keepdim=True)
    v = (v - mean) * (_rand(b, x, generator) + 0.5).view(b, 1, 1, 1, 1) + mean
    return v.view(b, nc, h, w)


def _translation(x: torch.Tensor, generator: torch.Generator | None, ratio: float = 0.125) -> torch.Tensor:
    b, _, h, w = x.shape
    sx, sy = int(h * ratio + 0.5), int(w * ratio + 0.5)
    tx = torch.randint(-sx, sx + 1, (b, 1, 1), generator=generator, device=x.device)
    ty = torch.randint(-sy, sy + 1, (b, 1, 1), generator=generator, device=x.device)
    gb, gx, gy = torch.meshgrid(
        torch.arange(b, device=x.device),
        torch.arange(h, device=x.device),
        torch.arange(w, device=x.device),
        indexing="ij",
    )
    gx = torch.clamp(gx + tx + 1, 0, h + 1)
    gy = torch.clamp(gy + ty + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    return padded.permute(0, 2, 3, 1)[gb, gx, gy].permute(0, 3, 1, 2).contiguous()


def _cutout(x: torch.Tensor, generator: torch.Generator | None, ratio: float = 0.5) -> torch.Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ox = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), generator=generator, device=x.device)
    oy = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), generator=generator, device=x.device)
    gb, gx, gy = torch.meshgrid(
        torch.arange(b, device=x.device),
        torch.arange(ch, device=x.device),
        torch.arange(cw, device=x.device),
        indexing="ij",
    )
    gx = torch.clamp(gx + ox - ch // 2, min=0, max=h - 1)
    gy = torch.clamp(gy + oy - cw // 2, min=0, max=w - 1)
    mask = torch.ones(b, h, w, dtype=x.dtype, device=x.device)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


def diff_augment(
    images: Sequence[torch.Tensor],
    policy: Sequence[str] = POLICIES,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Augment the images of each sample together: ``images`` are k tensors (B, C, H, W); sample
    ``i`` of every tensor gets the same colour change, translation and cutout."""
    images = list(images)
    if not policy:
        return images
    n, c = len(images), images[0].shape[1]
    if any(im.shape != images[0].shape for im in images):
        raise ValueError(f"paired images must have equal shapes, got {[tuple(im.shape) for im in images]}")
    x = torch.cat(images, dim=1)
    for p in policy:
        if p == "color":
            x = _color(x, n, generator)
        elif p == "translation":
            x = _translation(x, generator)
        elif p == "cutout":
            x = _cutout(x, generator)
        else:
            raise ValueError(f"unknown DiffAugment policy {p!r}")
    return list(x.split(c, dim=1))


def translate_on_white(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """DiffAugment's random translation of images in [-1, 1], the shifted-in border filled with white
    (the catalogue's background) rather than zeros (mid-grey), so the border reads as background.

    The guidance terms (:mod:`.clip_guidance`, :mod:`.classifier_guidance`) shift a generated image
    before their frozen judge, so the generator cannot please the judge with a fixed per-pixel pattern
    (an adversarial example) instead of the product."""
    (shifted,) = diff_augment([images - 1], ("translation",), generator)
    return shifted + 1
