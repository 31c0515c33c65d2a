"""measure_color: the garment's basic colour term from its pixels, robust to shading and patterns."""

import numpy as np
import pytest
from PIL import Image

from prodimg.data import render
from prodimg.data.catalog import render_items, sample_item_params
from prodimg.data.color_measure import garment_mask, measure_color, measure_colors
from prodimg.data.colors import BASIC_COLORS, COLOR_NAMES
from prodimg.data.fashion_mnist import is_available, load_fashion_mnist


def _swatch(rgb, size=32, shape="rect", noise=0.0, seed=0, backdrop=(255, 255, 255)):
    img = np.empty((size, size, 3), np.float64)
    img[:] = backdrop
    yy, xx = np.mgrid[0:size, 0:size]
    if shape == "rect":
        inside = (yy >= size // 5) & (yy < size - size // 5) & (xx >= size // 4) & (xx < size - size // 4)
    elif shape == "disc":
        inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    else:  # full frame
        inside = np.ones((size, size), bool)
    img[inside] = rgb
    img += np.random.default_rng(seed).normal(0, noise, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", COLOR_NAMES)
def test_synthetic_swatches(name):
    rgb = BASIC_COLORS[name]
    assert measure_color(_swatch(rgb)) == name
    assert measure_color(_swatch(rgb, shape="disc", noise=4.0, size=64)) == name
    assert measure_color(_swatch(rgb, shape="full")) == name  # no backdrop at all
    assert measure_color(Image.fromarray(_swatch(rgb))) == name  # PIL input
    # an off-white backdrop is estimated from the border
    if name != "white":
        assert measure_color(_swatch(rgb, backdrop=(235, 235, 230))) == name


def test_input_forms():
    red = _swatch(BASIC_COLORS["red"])
    rgba = np.concatenate([red, np.full(red.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    assert measure_color(rgba) == "red"
    assert measure_color(Image.fromarray(rgba, "RGBA")) == "red"
    assert measure_color(_swatch((128, 128, 128))[..., 0]) == "gray"  # HxW grayscale
    assert measure_colors(np.stack([red, _swatch(BASIC_COLORS["blue"])])) == ["red", "blue"]
    with pytest.raises(TypeError):
        measure_color(red.astype(np.float32))
    with pytest.raises(ValueError):
        measure_color(np.zeros((4, 4, 5), np.uint8))


def test_garment_mask_excludes_backdrop_and_outline():
    img = _swatch(BASIC_COLORS["white"])
    # draw a gray outline around the white rectangle (like the catalog renderer)
    img[5:27, 7, :] = img[5:27, 24, :] = 180
    img[5, 7:25, :] = img[26, 7:25, :] = 180
    mask = garment_mask(img)
    assert mask.any()
    assert (img[mask] > 240).all()  # only garment pixels, not outline or backdrop
    assert measure_color(img) == "white"


def _synthetic_garments(n):
    rng = np.random.default_rng(0)
    img = np.zeros((n, 28, 28), np.uint8)
    yy, xx = np.mgrid[0:28, 0:28]
    for i in range(n):
        top, left = rng.integers(1, 6), rng.integers(2, 8)
        shade = 150 + 60 * np.sin(xx / rng.uniform(2, 6)) * np.cos(yy / rng.uniform(3, 7))
        img[i, top : 28 - top, left : 28 - left] = np.clip(shade, 20, 255)[top : 28 - top, left : 28 - left]
    return img


def _accuracy(images, resolution=32, seed=0):
    n = len(images)
    colors = np.arange(n) % len(COLOR_NAMES)
    params = sample_item_params(np.random.default_rng(seed), np.zeros(n, int), colors)
    params.pattern = (np.arange(n) // len(COLOR_NAMES)) % len(render.PATTERN_NAMES)  # every colour x pattern
    params.period = np.where(params.pattern == 3, np.maximum(params.period, 5), params.period)
    rendered = render_items(images, params, resolution)
    predicted = measure_colors(rendered)
    ok = np.array([p == COLOR_NAMES[c] for p, c in zip(predicted, colors)])
    return ok, colors


def test_rendered_synthetic_garments_every_colour_and_pattern():
    ok, colors = _accuracy(_synthetic_garments(176))
    assert ok.all(), [COLOR_NAMES[c] for c in colors[~ok]]


@pytest.mark.skipif(
    not is_available(),
    reason="Fashion-MNIST IDX files absent: run `apt-get install -y dataset-fashion-mnist`",
)
@pytest.mark.parametrize("resolution", [32, 64])
def test_rendered_catalog_items_every_colour(resolution):
    images, _ = load_fashion_mnist("test")
    n = 440 if resolution == 32 else 220
    idx = np.random.default_rng(1).permutation(len(images))[:n]
    ok, colors = _accuracy(images[idx], resolution, seed=resolution)
    assert ok.mean() >= 0.97, ok.mean()
    for c in range(len(COLOR_NAMES)):  # white and black included
        assert ok[colors == c].mean() >= 0.9, COLOR_NAMES[c]
