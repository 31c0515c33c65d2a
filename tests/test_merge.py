"""Weight interpolation of two generators (WiSE-FT): exact endpoints, the midpoint, clear errors."""

import pytest
import torch

from prodimg import ProductGenerator
from prodimg.testing import make_tiny_pipeline, tiny_generator
from prodimg.training.merge import interpolate_state_dicts, main, merge_generators


def _weights(folder):
    return ProductGenerator.from_pretrained(folder, subfolder="generator").state_dict()


def test_merged_pipeline_interpolates_the_generator_and_keeps_the_rest(tmp_path):
    base, tuned = make_tiny_pipeline(seed=0), make_tiny_pipeline(seed=1)
    base.save_pretrained(tmp_path / "base")
    tuned.save_pretrained(tmp_path / "tuned")
    (tmp_path / "tuned" / "checkpoint-7").mkdir()  # a trainer's checkpoint is not copied
    wb, wt = _weights(tmp_path / "base"), _weights(tmp_path / "tuned")
    assert any(not torch.equal(wb[k], wt[k]) for k in wb)

    for alpha, expect in [(0.0, wb), (1.0, wt)]:
        out = merge_generators(tmp_path / "base", tmp_path / "tuned", alpha, tmp_path / f"m{alpha}")
        merged = _weights(out)
        assert all(torch.equal(merged[k], expect[k]) for k in merged)
    assert main([str(tmp_path / "base"), str(tmp_path / "tuned"), "--out", str(tmp_path / "mid")]) == 0
    mid = _weights(tmp_path / "mid")
    for k in mid:
        torch.testing.assert_close(mid[k], (wb[k] + wt[k]) / 2)
    assert not (tmp_path / "mid" / "checkpoint-7").exists()
    # everything but the generator's weights is the tuned pipeline's, and the result still generates
    te = tmp_path / "mid" / "text_encoder" / "model.safetensors"
    assert te.read_bytes() == (tmp_path / "tuned" / "text_encoder" / "model.safetensors").read_bytes()
    pipe = type(base).from_pretrained(tmp_path / "mid")
    images = pipe("red tee", generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert torch.isfinite(images).all()


def test_dtype_is_kept_and_bad_input_is_named(tmp_path):
    a = {"w": torch.zeros(3, dtype=torch.float16), "n": torch.tensor([1])}
    b = {"w": torch.ones(3, dtype=torch.float16), "n": torch.tensor([2])}
    out = interpolate_state_dicts(a, b, 0.25)
    assert out["w"].dtype == torch.float16 and torch.equal(
        out["w"], torch.full((3,), 0.25, dtype=torch.float16)
    )
    assert torch.equal(out["n"], b["n"])
    with pytest.raises(ValueError, match="alpha"):
        interpolate_state_dicts(a, b, 1.5)
    with pytest.raises(ValueError, match="only in tuned"):
        interpolate_state_dicts(a, {**b, "extra": torch.ones(1)}, 0.5)
    with pytest.raises(ValueError, match="shape"):
        interpolate_state_dicts(a, {**b, "w": torch.ones(4, dtype=torch.float16)}, 0.5)

    tiny_generator(seed=0).save_pretrained(tmp_path / "g16")
    tiny_generator(seed=0, sample_size=32).save_pretrained(tmp_path / "g32")
    with pytest.raises(ValueError, match="different configs.*sample_size"):
        merge_generators(tmp_path / "g16", tmp_path / "g32", 0.5, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="neither a pipeline"):
        merge_generators(tmp_path / "g16", tmp_path / "missing", 0.5, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_names_bad_input_without_a_traceback(tmp_path, capsys):
    tiny_generator(seed=0).save_pretrained(tmp_path / "g16")
    tiny_generator(seed=0, sample_size=32).save_pretrained(tmp_path / "g32")
    assert main([str(tmp_path / "g16"), str(tmp_path / "g32"), "--out", str(tmp_path / "out")]) == 2
    assert "error: the generators have different configs (attention_resolutions, sample_size)" in capsys.readouterr().err
    assert main([str(tmp_path / "g16"), str(tmp_path / "g16"), "--alpha", "2", "--out", str(tmp_path / "out")]) == 2
    assert "error: alpha must be in [0, 1], got 2.0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
