"""Generator and discriminator: shapes at every preset resolution, gradients, save/load."""

import pytest
import torch

from prodimg import ProductDiscriminator, ProductGenerator
from prodimg.models.presets import discriminator_preset, generator_preset
from prodimg.testing import tiny_discriminator, tiny_generator

TEXT = 32


def gen_inputs(b, size, z_dim=8, text_dim=TEXT, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, 77, dtype=torch.long)
    mask[:, 5:] = 0
    return dict(
        sample=torch.randn(b, 3, size, size, generator=g),
        timestep=torch.arange(b) % 4,
        z=torch.randn(b, z_dim, generator=g),
        encoder_hidden_states=torch.randn(b, 77, text_dim, generator=g),
        pooled_text_embeds=torch.randn(b, text_dim, generator=g),
        encoder_attention_mask=mask,
    )


@pytest.mark.parametrize("resolution", [32, 64, 128, 256])
def test_generator_presets_build_and_run(resolution):
    # Narrow the channels so that 256 px stays fast; the preset's structure is kept.
    cfg = generator_preset(resolution)
    cfg["block_out_channels"] = tuple(min(c, 16) for c in cfg["block_out_channels"])
    g = ProductGenerator(**cfg, z_dim=8, text_embed_dim=TEXT, pooled_text_dim=TEXT, style_dim=16, norm_num_groups=4)
    with torch.no_grad():
        out = g(**gen_inputs(2, resolution)).sample
    assert out.shape == (2, 3, resolution, resolution)
    assert out.abs().max() <= 1.0


@pytest.mark.parametrize("resolution", [32, 64, 128, 256])
def test_discriminator_presets_build_and_run(resolution):
    cfg = discriminator_preset(resolution)
    cfg["block_out_channels"] = tuple(min(c, 16) for c in cfg["block_out_channels"])
    d = ProductDiscriminator(**cfg, pooled_text_dim=TEXT, temb_dim=16)
    x = torch.randn(2, 3, resolution, resolution)
    out = d(x, x, torch.tensor([0, 3]), torch.randn(2, TEXT))
    assert out.logits.shape == (2,) and out.unconditional_logits.shape == (2,)
    assert out.features.shape == (2, 16)


def test_full_size_default_generator_parameter_count():
    g = ProductGenerator()
    n = sum(p.numel() for p in g.parameters())
    assert 1e6 < n < 10e6


def test_generator_gradients_reach_every_parameter():
    g = tiny_generator()
    # Zero-initialised style and attention output layers block gradients to earlier layers at
    # step 0; perturb them as one optimiser step would.
    with torch.no_grad():
        for p in g.parameters():
            p.add_(0.01 * torch.randn_like(p))
    g(**gen_inputs(2, 16)).sample.square().mean().backward()
    missing = [n for n, p in g.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_discriminator_gradients_and_text_projection():
    d = tiny_discriminator()
    x = torch.randn(3, 3, 16, 16, requires_grad=True)
    text = torch.randn(3, TEXT)
    out = d(x, torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2]), text)
    (out.logits.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    missing = [n for n, p in d.named_parameters() if p.grad is None]
    assert not missing
    # logits = unconditional + <features, P(text)>, and text_logits scores other captions.
    torch.testing.assert_close(out.logits, out.unconditional_logits + d.text_logits(out.features, text))
    other = d.text_logits(out.features, text.roll(1, 0))
    assert not torch.allclose(other, d.text_logits(out.features, text))


def test_generator_uses_text_mask_and_z():
    g = tiny_generator()
    with torch.no_grad():
        for p in g.parameters():
            p.add_(0.05 * torch.randn_like(p))
    inp = gen_inputs(1, 16)
    base = g(**inp).sample
    # Changing padded token states changes nothing; changing real tokens or z does.
    padded = dict(inp, encoder_hidden_states=inp["encoder_hidden_states"].clone())
    padded["encoder_hidden_states"][:, 10:] += torch.randn(1, 67, TEXT)
    torch.testing.assert_close(g(**padded).sample, base)
    real = dict(inp, encoder_hidden_states=inp["encoder_hidden_states"].clone())
    real["encoder_hidden_states"][:, :3] += torch.randn(1, 3, TEXT)
    assert (g(**real).sample - base).abs().max() > 1e-4
    assert (g(**dict(inp, z=torch.randn(1, 8))).sample - base).abs().max() > 1e-4


@pytest.mark.parametrize("factory", [tiny_generator, tiny_discriminator])
def test_save_load_roundtrip_safetensors(tmp_path, factory):
    m = factory()
    m.save_pretrained(tmp_path)
    assert list(tmp_path.glob("*.safetensors"))
    r = type(m).from_pretrained(tmp_path)
    for (n, a), (_, b) in zip(m.state_dict().items(), r.state_dict().items()):
        torch.testing.assert_close(a, b, msg=n)
    for key, value in m.config.items():
        if not key.startswith("_"):
            assert list(value) == list(r.config[key]) if isinstance(value, tuple) else value == r.config[key], key


def test_bad_configs():
    with pytest.raises(ValueError, match="power of two"):
        ProductGenerator(sample_size=48)
    with pytest.raises(ValueError, match="attention_resolutions"):
        ProductGenerator(sample_size=32, attention_resolutions=(3,))
    with pytest.raises(ValueError, match="levels"):
        ProductGenerator(sample_size=8, block_out_channels=(8, 8, 8, 8))
    with pytest.raises(ValueError, match="power of two"):
        ProductDiscriminator(sample_size=20)
    with pytest.raises(ValueError, match="preset"):
        generator_preset(48)


def test_upsample_conv_equals_nearest_upsampling_then_conv():
    from prodimg.models.embeddings import upsample_conv

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5, 7, 3, padding=1)
    x = torch.randn(2, 5, 6, 4, requires_grad=True)
    ref = conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
    out = upsample_conv(x, conv)
    assert out.shape == ref.shape == (2, 7, 12, 8)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # Gradients reach the conv's own parameters (and the input) as through the two-op form.
    grads = torch.autograd.grad(out.square().sum(), [x, conv.weight, conv.bias])
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, conv.weight, conv.bias])
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="3x3, stride-1, padding-1"):
        upsample_conv(x, torch.nn.Conv2d(5, 7, 3, padding=1, stride=2))


def test_matmul_attention_equals_sdpa():
    from prodimg.models.embeddings import matmul_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, n, 8, generator=g) for n in (20, 7, 7))
    mask = torch.ones(3, 1, 1, 7, dtype=torch.bool)
    mask[0, ..., 3:] = False
    mask[2, ..., 5:] = False
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(matmul_attention(q, k, v, mask), ref, atol=1e-5, rtol=1e-5)
    unmasked = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(matmul_attention(q, k, v, None), unmasked, atol=1e-5, rtol=1e-5)
    half = matmul_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask).float()
    torch.testing.assert_close(half, ref, atol=0.05, rtol=0.05)


def test_generator_sampling_path_matches_training_path():
    # Without autograd the generator takes its sampling shortcuts (in-place modulation and SiLU;
    # upsampling as a transposed conv runs in both); with autograd the plain ops. Same function.
    g = tiny_generator().eval()
    with torch.no_grad():  # non-zero style and attention output layers, so both paths matter
        for p in g.parameters():
            p.add_(0.05 * torch.randn_like(p))
    inputs = gen_inputs(3, g.config.sample_size, z_dim=g.config.z_dim, text_dim=g.config.text_embed_dim)
    train_out = g(**inputs).sample
    assert train_out.requires_grad
    with torch.no_grad():
        sample_out = g(**inputs).sample
    torch.testing.assert_close(sample_out, train_out.detach(), atol=1e-5, rtol=1e-5)
