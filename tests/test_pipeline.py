"""ProductImagePipeline with tiny seeded components (CPU, offline)."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch

from prodimg import ProductImagePipeline, PromptEmbeds
from prodimg.safety import UnsafePipelineError
from prodimg.testing import get_dummy_components

PROMPTS = ["red silk scarf", "blue striped t-shirt, product photo"]


@pytest.fixture(scope="module")
def pipe():
    p = ProductImagePipeline(**get_dummy_components())
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def saved_dir(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "pipe"
    pipe.save_pretrained(path)
    return path


def seeded(n, start=0):
    return [torch.Generator().manual_seed(start + i) for i in range(n)]


def test_output_types_and_shapes(pipe):
    out = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), output_type="np")
    assert isinstance(out.images, np.ndarray) and out.images.shape == (2, 16, 16, 3)
    assert out.images.min() >= 0 and out.images.max() <= 1
    pt = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert isinstance(pt, torch.Tensor) and pt.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), out.images, atol=1e-6)
    pil = pipe(PROMPTS[0], num_images_per_prompt=3, generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 3 and all(isinstance(im, PIL.Image.Image) and im.size == (16, 16) for im in pil)


def test_seeded_determinism_and_pinned_slice(pipe):
    a = pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0), output_type="np").images
    b = pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0), output_type="np").images
    np.testing.assert_array_equal(a, b)
    c = pipe(PROMPTS[0], generator=torch.Generator().manual_seed(1), output_type="np").images
    assert np.abs(a - c).max() > 1e-3
    expected = np.array(EXPECTED_SLICE)
    np.testing.assert_allclose(a[0, -3:, -3:, -1], expected, atol=1e-3)


# Pinned from this implementation (get_dummy_components(seed=0), "red silk scarf", seed 0).
EXPECTED_SLICE = [[0.4826, 0.2052, 0.3374], [0.2774, 0.3105, 0.1985], [0.3289, 0.3691, 0.2807]]


def test_batch_equals_single(pipe):
    batch = pipe(PROMPTS, generator=seeded(2), output_type="np").images
    for i, prompt in enumerate(PROMPTS):
        single = pipe(prompt, generator=seeded(1, start=i), output_type="np").images
        np.testing.assert_allclose(batch[i], single[0], atol=1e-5)


def test_text_changes_the_image(pipe):
    a = pipe(PROMPTS, generator=seeded(1, 7) + seeded(1, 7), output_type="np").images  # same noise, other text
    assert np.abs(a[0] - a[1]).max() > 1e-2


def test_padding_to_longest_equals_max_length_padding(pipe):
    """The causal text encoder and the masked cross-attention make padding invisible: padding prompts to
    the batch's longest one (the default, for speed) gives the max-length result, with and without CFG
    (whose negative prompts may have another length)."""
    prompts = ["red dress", "a blue striped cotton shirt with long sleeves, product photo"]
    kwargs = dict(output_type="np", negative_prompt=["dark", "blurry low quality photo of a bag"])
    try:
        for guidance in (1.0, 2.0):
            pipe.pad_prompts_to_max_length = True
            full = pipe(prompts, generator=seeded(2, 3), guidance_scale=guidance, **kwargs).images
            pipe.pad_prompts_to_max_length = False
            short = pipe(prompts, generator=seeded(2, 3), guidance_scale=guidance, **kwargs).images
            np.testing.assert_allclose(short, full, atol=1e-5)
    finally:
        pipe.pad_prompts_to_max_length = False
    assert pipe.encode_text(prompts).hidden_states.shape[1] < pipe.max_text_length


def test_return_dict_false(pipe):
    out = pipe(PROMPTS[0], generator=torch.Generator().manual_seed(0), output_type="np", return_dict=False)
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == (1, 16, 16, 3)


def test_steps_and_guidance(pipe):
    for steps in (1, 2, 3, 4):
        out = pipe(PROMPTS[0], num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np")
        assert out.images.shape == (1, 16, 16, 3) and np.isfinite(out.images).all()
    g1 = pipe(PROMPTS[0], guidance_scale=1.0, generator=torch.Generator().manual_seed(0), output_type="np").images
    g3 = pipe(PROMPTS[0], guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert np.abs(g1 - g3).max() > 1e-3
    neg = pipe(
        PROMPTS[0], negative_prompt="gray", guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert np.abs(neg - g3).max() > 1e-4


def test_prompt_embeds_path_equals_text_path(pipe):
    embeds = pipe.encode_text(PROMPTS)
    a = pipe(prompt_embeds=embeds, generator=seeded(2), output_type="np").images
    b = pipe(PROMPTS, generator=seeded(2), output_type="np").images
    np.testing.assert_array_equal(a, b)


def test_latents_argument(pipe):
    latents = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    a = pipe(PROMPTS[0], latents=latents, generator=torch.Generator().manual_seed(0), output_type="np").images
    b = pipe(PROMPTS[0], latents=latents, generator=torch.Generator().manual_seed(0), output_type="np").images
    np.testing.assert_array_equal(a, b)


def test_long_prompt_truncated_with_warning(pipe, caplog):
    long_prompt = "red dress " * 50 + "UNIQUETAILWORD"
    from diffusers.utils import logging as dlogging

    dlogging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            out = pipe(long_prompt, generator=torch.Generator().manual_seed(0), output_type="np")
    finally:
        dlogging.disable_propagation()
    assert out.images.shape == (1, 16, 16, 3)
    assert "uniquetailword" in caplog.text.lower() and "77" in caplog.text


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(prompt=None), ValueError, "Provide `prompt`"),
        (dict(prompt=[]), ValueError, "empty list"),
        (dict(prompt=123), TypeError, "`prompt` must be a string"),
        (dict(prompt=["ok", 5]), TypeError, "item 1"),
        (dict(prompt="a", prompt_embeds="x"), ValueError, "not both"),
        (dict(prompt=["a", "b"], negative_prompt=["x"]), ValueError, "1 entries but there are 2 prompts"),
        (dict(prompt="a", negative_prompt=3), TypeError, "negative_prompt"),
        (dict(prompt="a", num_images_per_prompt=0), ValueError, "num_images_per_prompt"),
        (dict(prompt="a", num_images_per_prompt=1.5), ValueError, "num_images_per_prompt"),
        (dict(prompt="a", num_inference_steps=0), ValueError, "num_inference_steps"),
        (dict(prompt="a", num_inference_steps=5), ValueError, "1..4"),
        (dict(prompt="a", guidance_scale="big"), TypeError, "guidance_scale"),
        (dict(prompt="a", guidance_scale=-1.0), ValueError, "guidance_scale"),
        (dict(prompt="a", guidance_scale=float("nan")), TypeError, "guidance_scale"),
        (dict(prompt="a", output_type="latent"), ValueError, "output_type"),
        (dict(prompt="a", latents=torch.zeros(1, 3, 8, 8)), ValueError, r"\(1, 3, 16, 16\)"),
        (dict(prompt="a", generator=[torch.Generator()] * 2), ValueError, "list of 2 generators"),
        (dict(prompt_embeds=torch.zeros(1, 77, 32)), TypeError, "PromptEmbeds"),
    ],
)
def test_check_inputs_errors(pipe, kwargs, error, match):
    with pytest.raises(error, match=match):
        pipe(**kwargs)


def test_save_load_roundtrip(pipe, saved_dir):
    assert sorted(p.name for p in saved_dir.iterdir()) == ["generator", "model_index.json", "scheduler", "text_encoder", "tokenizer"]
    weights = sorted(str(p.relative_to(saved_dir)) for p in saved_dir.rglob("*") if p.suffix in {".safetensors", ".bin"})
    assert weights == ["generator/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"]
    loaded = ProductImagePipeline.from_pretrained(saved_dir)
    loaded.set_progress_bar_config(disable=True)
    a = pipe(PROMPTS, generator=seeded(2), output_type="np").images
    b = loaded(PROMPTS, generator=seeded(2), output_type="np").images
    assert np.abs(a - b).max() < 1e-5


def test_reload_in_fresh_interpreter(pipe, saved_dir, tmp_path):
    expected = pipe(PROMPTS, generator=seeded(2), output_type="np").images
    np.save(tmp_path / "expected.npy", expected)
    script = textwrap.dedent(
        f"""
        import numpy as np, torch
        from prodimg import ProductImagePipeline
        pipe = ProductImagePipeline.from_pretrained({str(saved_dir)!r})
        pipe.set_progress_bar_config(disable=True)
        out = pipe({PROMPTS!r}, generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="np").images
        diff = np.abs(out - np.load({str(tmp_path / "expected.npy")!r})).max()
        assert diff < 1e-5, diff
        print("OK", diff)
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "OK" in res.stdout


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs(saved_dir, dtype):
    p = ProductImagePipeline.from_pretrained(saved_dir, dtype=dtype)
    p.set_progress_bar_config(disable=True)
    assert p.generator.dtype == dtype and p.text_encoder.dtype == dtype
    seen = []
    hook = p.generator.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    out = p(PROMPTS, generator=seeded(2), output_type="np").images
    hook.remove()
    assert out.shape == (2, 16, 16, 3) and np.isfinite(out).all()
    # the denoising chain stays float32 (one dtype at every step: one graph under torch.compile)
    assert seen == [torch.float32] * p.scheduler.config.num_train_timesteps


def test_missing_and_incomplete_folders(saved_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ProductImagePipeline.from_pretrained(str(tmp_path / "nope" / "deeper" / "x"))
    with pytest.raises(FileNotFoundError, match="model_index.json is missing"):
        ProductImagePipeline.from_pretrained(tmp_path)
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(saved_dir, broken)
    (broken / "generator" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no .safetensors weights"):
        ProductImagePipeline.from_pretrained(broken)


CANARY_PAYLOAD = """
import os, pickle, sys
class Payload:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))
with open(sys.argv[1], "wb") as f:
    pickle.dump({{"weight": Payload()}}, f)
"""


@pytest.mark.parametrize("name", ["generator/diffusion_pytorch_model.bin", "text_encoder/pytorch_model.bin", "generator/model.ckpt"])
def test_pickle_weights_refused_never_unpickled(saved_dir, tmp_path, name):
    import shutil

    hostile = tmp_path / "hostile"
    shutil.copytree(saved_dir, hostile)
    canary = tmp_path / "canary"
    target = hostile / name
    subprocess.run([sys.executable, "-c", CANARY_PAYLOAD.format(), str(target), str(canary)], check=True)
    # The payload works: unpickling it would write the canary (checked on a throwaway copy).
    probe = tmp_path / "probe"
    subprocess.run([sys.executable, "-c", CANARY_PAYLOAD.format(), str(tmp_path / "p.bin"), str(probe)], check=True)
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(tmp_path / 'p.bin')!r}, 'rb'))"])
    assert probe.exists()
    with pytest.raises(UnsafePipelineError, match="pickle"):
        ProductImagePipeline.from_pretrained(hostile)
    assert not canary.exists()


def test_pickle_renamed_to_safetensors_refused(saved_dir, tmp_path):
    import shutil

    hostile = tmp_path / "hostile"
    shutil.copytree(saved_dir, hostile)
    canary = tmp_path / "canary"
    target = hostile / "generator" / "diffusion_pytorch_model.safetensors"
    subprocess.run([sys.executable, "-c", CANARY_PAYLOAD.format(), str(target), str(canary)], check=True)
    with pytest.raises(UnsafePipelineError, match="safetensors"):
        ProductImagePipeline.from_pretrained(hostile)
    assert not canary.exists()


def test_foreign_component_and_remote_code_refused(saved_dir, tmp_path):
    import shutil

    for mutate, match in [
        (lambda idx: idx.update(generator=["os", "system"]), "component 'generator'"),
        (lambda idx: idx.update(auto_map={"x": "y"}), "remote-code"),
        (lambda idx: idx.update(_class_name="StableDiffusionPipeline"), "_class_name"),
    ]:
        folder = tmp_path / f"f{len(list(tmp_path.iterdir()))}"
        shutil.copytree(saved_dir, folder)
        idx = json.loads((folder / "model_index.json").read_text())
        mutate(idx)
        (folder / "model_index.json").write_text(json.dumps(idx))
        with pytest.raises(UnsafePipelineError, match=match):
            ProductImagePipeline.from_pretrained(folder)


def test_refuses_unsafe_kwargs(saved_dir):
    with pytest.raises(ValueError, match="safetensors"):
        ProductImagePipeline.from_pretrained(saved_dir, use_safetensors=False)
    with pytest.raises(ValueError, match="never runs code"):
        ProductImagePipeline.from_pretrained(saved_dir, trust_remote_code=True)


def test_save_refuses_non_finite_weights(tmp_path):
    p = ProductImagePipeline(**get_dummy_components())
    with torch.no_grad():
        p.generator.conv_out.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        p.save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x" / "generator").exists()


def test_prompt_embeds_dataclass_repeat():
    e = PromptEmbeds(torch.zeros(2, 77, 4), torch.zeros(2, 4), torch.ones(2, 77))
    r = e.repeat(3)
    assert r.hidden_states.shape == (6, 77, 4) and r.pooled.shape == (6, 4) and r.attention_mask.shape == (6, 77)
