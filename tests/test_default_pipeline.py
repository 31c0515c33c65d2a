"""The shipped default pipeline (pipelines/prodimg-fashion-32): it loads offline and behaves.

This checks mechanics, not quality (that is `prodimg eval`'s job): shapes, value range, seeded
determinism, and that colour words move the garment's measured colour.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from prodimg import ProductImagePipeline
from prodimg.data.color_measure import dominant_lab, garment_mask
from prodimg.data.colorspace import srgb_to_lab

DEFAULT = Path(__file__).resolve().parents[1] / "pipelines" / "prodimg-fashion-32"


@pytest.fixture(scope="module")
def pipe():
    p = ProductImagePipeline.from_pretrained(DEFAULT, dtype=torch.float32)
    p.set_progress_bar_config(disable=True)
    return p


def generate(pipe, prompt, n=8, seed=0):
    gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    return pipe(prompt, num_images_per_prompt=n, generator=gens, output_type="np").images


def test_shipped_folder_is_small_safetensors_fp16():
    files = [p for p in DEFAULT.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 40 * 1024 * 1024
    assert not [p for p in files if p.suffix in {".bin", ".pt", ".ckpt", ".pth"}]
    assert (DEFAULT / "README.md").is_file()
    from safetensors import safe_open

    with safe_open(str(DEFAULT / "generator" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}


def test_shapes_range_and_determinism(pipe):
    a = generate(pipe, "red striped dress", n=4)
    b = generate(pipe, "red striped dress", n=4)
    assert a.shape == (4, 32, 32, 3) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    # Different seeds give different images (the model is not collapsed to one output per prompt).
    assert np.abs(a[0] - a[1]).mean() > 0.01


def mean_garment_lab(images):
    labs = []
    for im in images:
        u8 = (im * 255).round().astype(np.uint8)
        mask = garment_mask(u8)
        if mask.sum() >= 6:
            labs.append(dominant_lab(srgb_to_lab(u8[mask].astype(np.float64))))
    assert len(labs) >= len(images) // 2, "most generated images should show a garment on the backdrop"
    return np.mean(labs, axis=0)


def test_colour_words_change_the_garment_colour(pipe):
    red = mean_garment_lab(generate(pipe, "red t-shirt"))
    blue = mean_garment_lab(generate(pipe, "blue t-shirt"))
    yellow = mean_garment_lab(generate(pipe, "yellow t-shirt"))
    # CIELAB: red has a > 0, blue has b < 0, yellow has b > 0 and is lighter than blue.
    assert red[1] > blue[1] + 15
    assert yellow[2] > blue[2] + 30
    assert yellow[0] > blue[0] + 15
