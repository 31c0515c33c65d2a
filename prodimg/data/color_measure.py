"""Measure which of the 11 basic colours a product image shows.

``measure_color`` finds the garment (pixels not connected to the image border through
backdrop-coloured pixels, minus a rim that holds the outline, shadow and anti-aliased edge),
finds the dominant colour mode of those pixels in CIELAB (mean-shift from a few starts, so that
pattern pixels — a darker or lighter variant of the garment colour — and shading do not pull the
estimate), and returns the nearest palette anchor of :mod:`prodimg.data.colors`. It only uses
numpy, so metrics can call it on generated images without any network or model.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .colors import BASIC_COLORS, COLOR_NAMES
from .colorspace import srgb_to_lab

ANCHOR_LAB = srgb_to_lab(np.array([BASIC_COLORS[n] for n in COLOR_NAMES], dtype=np.float64))
"""(11, 3) CIELAB anchors in the order of ``COLOR_NAMES``."""

BACKDROP_TOLERANCE = 10.0  # Delta E from the backdrop estimate that still counts as backdrop
MODE_RADIUS = 10.0  # Delta E window of the mean-shift
LIGHTNESS_WEIGHT = 0.75  # weight of Delta L against Delta a, Delta b when choosing the anchor
MIN_GARMENT_PIXELS = 6


def _as_rgb_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba)
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"image must be HxWx3 (or HxWx4 / HxW), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise TypeError(f"image array must be uint8 0..255, got {arr.dtype}")
    if arr.shape[-1] == 4:
        a = arr[..., 3:].astype(np.float64) / 255.0
        arr = np.rint(arr[..., :3] * a + 255.0 * (1 - a)).astype(np.uint8)
    return arr


def _border(mask_like: np.ndarray) -> np.ndarray:
    b = np.zeros(mask_like.shape[:2], dtype=bool)
    b[0, :] = b[-1, :] = b[:, 0] = b[:, -1] = True
    return b


def _flood(passable: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    reach = seeds & passable
    while True:
        grown = reach.copy()
        grown[1:, :] |= reach[:-1, :]
        grown[:-1, :] |= reach[1:, :]
        grown[:, 1:] |= reach[:, :-1]
        grown[:, :-1] |= reach[:, 1:]
        grown &= passable
        if np.array_equal(grown, reach):
            return reach
        reach = grown


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(radius):
        prev = out.copy()
        out[1:, :] &= prev[:-1, :]
        out[:-1, :] &= prev[1:, :]
        out[:, 1:] &= prev[:, :-1]
        out[:, :-1] &= prev[:, 1:]
        out &= ~_border(out)
    return out


def garment_mask(image) -> np.ndarray:
    """Boolean HxW mask of the garment's own pixels (no backdrop, outline or edge)."""
    rgb = _as_rgb_array(image)
    lab = srgb_to_lab(rgb)
    return _garment_mask_lab(lab)


def _garment_mask_lab(lab: np.ndarray) -> np.ndarray:
    border = _border(lab)
    backdrop = np.median(lab[border], axis=0)
    near = np.linalg.norm(lab - backdrop, axis=-1) < BACKDROP_TOLERANCE
    foreground = ~_flood(near, border)
    rim = max(1, round(min(lab.shape[:2]) / 32))
    for radius in (rim, rim - 1, 0):
        core = _erode(foreground, radius) if radius > 0 else foreground
        if core.sum() >= MIN_GARMENT_PIXELS:
            return core
    return core


def dominant_lab(pixels: np.ndarray, radius: float = MODE_RADIUS, iterations: int = 10) -> np.ndarray:
    """The densest colour mode of ``pixels`` (M, 3) in CIELAB, by mean-shift with a flat window."""
    if len(pixels) == 0:
        raise ValueError("no pixels to measure")
    starts = [np.median(pixels, axis=0)]
    order = np.argsort(pixels[:, 0])
    for q in (0.15, 0.5, 0.85):
        starts.append(pixels[order[int(q * (len(pixels) - 1))]])
    best, best_support = starts[0], -1
    for centre in starts:
        for _ in range(iterations):
            inside = np.linalg.norm(pixels - centre, axis=-1) < radius
            if not inside.any():
                break
            new = np.median(pixels[inside], axis=0)
            if np.allclose(new, centre):
                break
            centre = new
        support = int((np.linalg.norm(pixels - centre, axis=-1) < radius).sum())
        if support > best_support:
            best, best_support = centre, support
    return best


def nearest_color(lab: np.ndarray) -> str:
    """Name of the palette anchor nearest to one CIELAB colour (lightness down-weighted)."""
    w = np.array([LIGHTNESS_WEIGHT, 1.0, 1.0])
    d = np.linalg.norm((ANCHOR_LAB - np.asarray(lab)) * w, axis=-1)
    return COLOR_NAMES[int(np.argmin(d))]


def measure_color(image) -> str:
    """Return the basic colour term (one of ``COLOR_NAMES``) of the product in ``image``.

    ``image``: a PIL image or a uint8 array HxWx3 (HxWx4 is composited onto white, HxW is gray).
    The backdrop colour is estimated from the image border, so it need not be pure white.
    """
    lab = srgb_to_lab(_as_rgb_array(image))
    mask = _garment_mask_lab(lab)
    pixels = lab[mask] if mask.any() else lab.reshape(-1, 3)
    return nearest_color(dominant_lab(pixels))


def measure_colors(images) -> list[str]:
    """``measure_color`` over a batch (N, H, W, 3) or a list of images."""
    return [measure_color(im) for im in images]


__all__ = ["ANCHOR_LAB", "dominant_lab", "garment_mask", "measure_color", "measure_colors", "nearest_color"]
