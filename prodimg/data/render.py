"""Vectorised rendering of Fashion-MNIST garments as RGB studio product photos.

A 28x28 grayscale garment becomes an RGB image on a white backdrop:

1. the silhouette (pixels above a small threshold, holes filled) gives a soft alpha matte;
2. the garment's own shading is kept: its intensity, normalised per image around the median,
   becomes a multiplicative light factor (0.7..1.25) plus a small highlight toward white;
3. the garment is tinted with a (jittered) basic colour; a pattern (stripes, gingham checks, polka
   dots) is drawn inside it in a darker or lighter variant of that colour;
4. a soft gray outline just outside the silhouette keeps white (and every other) garment visible
   on the white backdrop.

Everything works on batches ``(N, 28, 28)`` with numpy; the garment occupies 28/32 of the canvas.
"""

from __future__ import annotations

import numpy as np

from .colors import BASIC_COLORS, COLOR_NAMES
from .colorspace import lab_to_srgb, srgb_to_lab

PATTERN_NAMES: list[str] = ["solid", "striped", "checked", "dotted"]
"""Order defines the ClassLabel ids of the ``pattern`` column."""

# Pattern pixels are a darker variant of light/saturated colours and a lighter variant of dark ones.
PATTERN_DARKER_COLORS = frozenset({"white", "gray", "yellow", "orange", "pink", "green", "red"})
PATTERN_DARKEN = 0.6  # pattern = colour * 0.6
PATTERN_LIGHTEN = 0.45  # pattern = colour + 0.45 * (255 - colour)

# Per-image colour jitter (CIELAB): lightness +-L, hue rotation +-deg, chroma scale, tint of neutrals.
JITTER_LIGHTNESS = 5.0
JITTER_HUE_DEG = 6.0
JITTER_CHROMA = 0.1
JITTER_NEUTRAL_TINT = 2.0

# Shading: light factor = clip(1 + SHADE_GAIN * (v - median) / spread, SHADE_MIN, SHADE_MAX).
SHADE_GAIN = 0.45
SHADE_MIN, SHADE_MAX = 0.7, 1.25
HIGHLIGHT_START, HIGHLIGHT_GAIN, HIGHLIGHT_MAX = 0.3, 0.3, 0.5

BACKDROP = 255.0
OUTLINE_GRAY = 110.0
OUTLINE_OPACITY = 0.55

MASK_THRESHOLD = 4  # 0..255 intensity above which a Fashion-MNIST pixel belongs to the garment

STRIPE_PERIODS = (4, 5, 6)  # in pixels at 32 px (scaled with the resolution)
DOT_PERIODS = (5, 6)
DOT_RADIUS = 1.2
ORIENTATIONS = ("horizontal", "vertical", "diagonal")

_ANCHOR_LAB = srgb_to_lab(np.array([BASIC_COLORS[n] for n in COLOR_NAMES], dtype=np.float64))
_ACHROMATIC = np.array([n in ("black", "white", "gray") for n in COLOR_NAMES])
_DARKER = np.array([n in PATTERN_DARKER_COLORS for n in COLOR_NAMES])


def jitter_colors(color_ids: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Jittered sRGB colours (N, 3) float for palette ids (N,), from uniforms ``u`` (N, 3) in [0, 1)."""
    color_ids = np.asarray(color_ids)
    lab = _ANCHOR_LAB[color_ids].copy()
    d_l = (2 * u[:, 0] - 1) * JITTER_LIGHTNESS
    angle = np.deg2rad((2 * u[:, 1] - 1) * JITTER_HUE_DEG)
    chroma = 1 + (2 * u[:, 2] - 1) * JITTER_CHROMA
    a, b = lab[:, 1], lab[:, 2]
    ca, sa = np.cos(angle), np.sin(angle)
    new_a = (a * ca - b * sa) * chroma
    new_b = (a * sa + b * ca) * chroma
    neutral = _ACHROMATIC[color_ids]
    # neutrals get a faint warm/cool tint instead of a hue rotation
    new_a = np.where(neutral, (2 * u[:, 1] - 1) * JITTER_NEUTRAL_TINT, new_a)
    new_b = np.where(neutral, (2 * u[:, 2] - 1) * JITTER_NEUTRAL_TINT, new_b)
    lab = np.stack([np.clip(lab[:, 0] + d_l, 0, 100), new_a, new_b], axis=-1)
    return lab_to_srgb(lab)


def pattern_colors(color_ids: np.ndarray, base_rgb: np.ndarray) -> np.ndarray:
    """The darker/lighter variant of each base colour used for pattern pixels."""
    darker = _DARKER[np.asarray(color_ids)][:, None]
    return np.where(darker, base_rgb * PATTERN_DARKEN, base_rgb + PATTERN_LIGHTEN * (255.0 - base_rgb))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes of boolean masks (N, H, W): pixels not 4-connected to the border via background."""
    outside = np.zeros_like(mask)
    outside[:, 0, :] = ~mask[:, 0, :]
    outside[:, -1, :] = ~mask[:, -1, :]
    outside[:, :, 0] |= ~mask[:, :, 0]
    outside[:, :, -1] |= ~mask[:, :, -1]
    background = ~mask
    while True:
        grown = outside.copy()
        grown[:, 1:, :] |= outside[:, :-1, :]
        grown[:, :-1, :] |= outside[:, 1:, :]
        grown[:, :, 1:] |= outside[:, :, :-1]
        grown[:, :, :-1] |= outside[:, :, 1:]
        grown &= background
        if np.array_equal(grown, outside):
            return ~outside
        outside = grown


def _erode4(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[:, 1:, :] &= mask[:, :-1, :]
    out[:, :-1, :] &= mask[:, 1:, :]
    out[:, :, 1:] &= mask[:, :, :-1]
    out[:, :, :-1] &= mask[:, :, 1:]
    out[:, 0, :] = out[:, -1, :] = False
    out[:, :, 0] = out[:, :, -1] = False
    return out


def _max_filter(a: np.ndarray, radius: int) -> np.ndarray:
    """Square max filter of size 2*radius+1 over the last two axes (zero padding)."""
    out = a.copy()
    for axis in (1, 2):
        src = out.copy()
        for d in range(1, radius + 1):
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis], hi[axis] = slice(d, None), slice(None, -d)
            np.maximum(out[tuple(lo)], src[tuple(hi)], out=out[tuple(lo)])
            np.maximum(out[tuple(hi)], src[tuple(lo)], out=out[tuple(hi)])
    return out


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear interpolation weights (half-pixel centres, edge clamped)."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (pos - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), lo] += 1 - w
    m[np.arange(n_out), hi] += w
    return m


def _quantiles(values: np.ndarray, mask: np.ndarray, qs: tuple[float, ...]) -> list[np.ndarray]:
    n = values.shape[0]
    flat = np.where(mask, values, np.inf).reshape(n, -1)
    flat.sort(axis=1)
    count = np.maximum(mask.reshape(n, -1).sum(axis=1), 1)
    out = []
    for q in qs:
        idx = np.floor((count - 1) * q).astype(np.int64)
        v = np.take_along_axis(flat, idx[:, None], axis=1)[:, 0]
        out.append(np.where(np.isfinite(v), v, 0.0).astype(np.float32))
    return out


def garment_layers(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Alpha matte, light factor and highlight (each (N, 28, 28) float32) of Fashion-MNIST images."""
    v = images.astype(np.float32) / 255.0
    mask = fill_holes(images > MASK_THRESHOLD)
    interior = _erode4(mask)
    alpha = np.where(interior, 1.0, np.where(mask, np.clip(v / 0.12, 0.0, 1.0), 0.0)).astype(np.float32)
    q10, q50, q90 = _quantiles(v, mask, (0.1, 0.5, 0.9))
    spread = np.maximum(q90 - q10, 0.15)[:, None, None]
    shade = (v - q50[:, None, None]) / spread
    light = np.clip(1.0 + SHADE_GAIN * shade, SHADE_MIN, SHADE_MAX).astype(np.float32)
    highlight = (np.clip(shade - HIGHLIGHT_START, 0.0, HIGHLIGHT_MAX) * HIGHLIGHT_GAIN).astype(np.float32)
    return alpha, light, highlight


def pattern_strength(
    pattern: np.ndarray,
    orientation: np.ndarray,
    period: np.ndarray,
    phase_y: np.ndarray,
    phase_x: np.ndarray,
    resolution: int,
) -> np.ndarray:
    """Pattern coverage (N, R, R) float32 in [0, 1] (0 = garment colour, 1 = pattern colour).

    ``period``/``phase_*`` are in 32-px units and scale with the resolution.
    """
    n = pattern.shape[0]
    scale = resolution // 32
    yy, xx = np.meshgrid(np.arange(resolution), np.arange(resolution), indexing="ij")
    yy = yy[None].astype(np.int64)
    xx = xx[None].astype(np.int64)
    p_len = (period * scale)[:, None, None].astype(np.int64)
    py = (phase_y * scale)[:, None, None].astype(np.int64)
    px = (phase_x * scale)[:, None, None].astype(np.int64)
    width = (np.maximum(1, np.round(period * 0.28)) * scale)[:, None, None]
    out = np.zeros((n, resolution, resolution), dtype=np.float32)

    sel = pattern == PATTERN_NAMES.index("striped")
    if sel.any():
        o = orientation[sel][:, None, None]
        t = np.where(o == 0, yy, np.where(o == 1, xx, yy + xx))
        out[sel] = ((t + py[sel]) % p_len[sel]) < width[sel]

    sel = pattern == PATTERN_NAMES.index("checked")
    if sel.any():
        # gingham lines are one unit wide so that most of the garment keeps its own colour
        rows = ((yy + py[sel]) % p_len[sel]) < scale
        cols = ((xx + px[sel]) % p_len[sel]) < scale
        out[sel] = 0.5 * rows + 0.5 * cols

    sel = pattern == PATTERN_NAMES.index("dotted")
    if sel.any():
        p = p_len[sel]
        row = (yy + py[sel]) // p
        ly = (yy + py[sel]) % p
        lx = (xx + px[sel] + (row % 2) * (p // 2)) % p
        centre = (p - 1) / 2.0
        d = np.sqrt((ly - centre) ** 2 + (lx - centre) ** 2)
        out[sel] = np.clip(DOT_RADIUS * scale + 0.5 - d, 0.0, 1.0)
    return out


def render_garments(
    images: np.ndarray,
    base_rgb: np.ndarray,
    pattern_rgb: np.ndarray,
    pattern: np.ndarray,
    orientation: np.ndarray,
    period: np.ndarray,
    phase_y: np.ndarray,
    phase_x: np.ndarray,
    resolution: int = 32,
) -> np.ndarray:
    """Render garments (N, 28, 28) uint8 as product photos (N, R, R, 3) uint8 on a white backdrop."""
    if resolution % 32 != 0 or resolution <= 0:
        raise ValueError(f"resolution must be a positive multiple of 32, got {resolution}")
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 of shape (N, 28, 28), got {images.dtype} {images.shape}")
    n = images.shape[0]
    scale = resolution // 32
    size, pad = 28 * scale, 2 * scale
    alpha28, light28, hl28 = garment_layers(images)
    if scale > 1:
        m = _bilinear_matrix(28, size)
        alpha28, light28, hl28 = (np.matmul(np.matmul(m, a), m.T) for a in (alpha28, light28, hl28))
    canvas = (slice(None), slice(pad, pad + size), slice(pad, pad + size))
    alpha = np.zeros((n, resolution, resolution), dtype=np.float32)
    light = np.ones_like(alpha)
    highlight = np.zeros_like(alpha)
    alpha[canvas], light[canvas], highlight[canvas] = alpha28, light28, hl28

    strength = pattern_strength(pattern, orientation, period, phase_y, phase_x, resolution)[..., None]
    base = np.asarray(base_rgb, dtype=np.float32)[:, None, None, :]
    pat = np.asarray(pattern_rgb, dtype=np.float32)[:, None, None, :]
    garment = base * (1.0 - strength) + pat * strength
    garment = garment * light[..., None]
    garment = np.minimum(garment, 255.0)
    garment = garment + (255.0 - garment) * highlight[..., None]

    ring = np.clip(_max_filter(alpha, scale) - alpha, 0.0, 1.0)
    backdrop = BACKDROP - ring * OUTLINE_OPACITY * (BACKDROP - OUTLINE_GRAY)
    a = alpha[..., None]
    out = backdrop[..., None] * (1.0 - a) + garment * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
