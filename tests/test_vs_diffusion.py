"""benchmarks/vs_diffusion.py end to end with tiny models and data: both trainings respect the budget,
both pipelines are evaluated by prodimg eval's code, and the table and results are written."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_eval import TinyFeatures, make_labeled_dataset

from prodimg.testing import make_tiny_pipeline, tiny_discriminator, tiny_generator

REPO = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("vs_diffusion", REPO / "benchmarks" / "vs_diffusion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    yield from _setup(tmp_path)
    torch.set_num_threads(threads)  # --threads changes this process's setting


def _setup(tmp_path):
    make_labeled_dataset(tmp_path / "data", {"train": 12, "test": 6, "test_unseen_pairs": 4})
    make_tiny_pipeline(sample_size=16).save_pretrained(tmp_path / "pipe")
    for name, module in (("g.json", tiny_generator()), ("d.json", tiny_discriminator())):
        cfg = {k: v for k, v in dict(module.config).items() if not k.startswith("_")}
        (tmp_path / name).write_text(json.dumps(cfg))
    yield tmp_path


def test_vs_diffusion_runs_end_to_end(setup):
    bench = load_benchmark()
    out = setup / "out"
    argv = ["--dataset", str(setup / "data"), "--text_encoder", str(setup / "pipe"), "--resolution", "16",
            "--budget_minutes", "0.01", "--gan_generator_config", str(setup / "g.json"),
            "--gan_discriminator_config", str(setup / "d.json"), "--gan_batch_size", "4",
            "--baseline_batch_size", "4", "--unet_channels", "8,16", "--num_images", "4", "--batch_size", "4",
            "--gan_steps", "1", "4", "--ddim_steps", "2", "--metrics", "fid,color_accuracy,category_accuracy",
            "--output_dir", str(out)]
    with pytest.raises(SystemExit, match="needs finished trainings"):
        bench.main(argv + ["--train", "none"])
    # The two trainings side by side (here one after the other), then the evaluation alone.
    assert bench.main(argv + ["--train", "gan", "--threads", "1"])["baseline_training"] is None
    assert bench.main(argv + ["--train", "baseline", "--threads", "1"])["baseline_training"]["threads"] == 1
    result = bench.main(argv + ["--train", "none"], feature_extractor=TinyFeatures())
    assert [(r["system"], r["steps"]) for r in result["rows"]] == [("ours", 1), ("ours", 4), ("diffusers DDIM", 2)]
    for r in result["rows"]:
        assert np.isfinite(r["metrics"]["fid/test"]) and 0 <= r["metrics"]["color_accuracy"] <= 1
        assert r["images_per_second"] > 0
    assert result["gan_training"]["stop_reason"].startswith("max_train_seconds")
    assert result["baseline_training"]["steps"] >= 1
    table = (out / "vs_diffusion.md").read_text()
    assert "| ours | 4 |" in table and "| diffusers DDIM | 2 |" in table and "sampling speed" in table
    assert (out / "eval" / "ddim-2" / "report.json").is_file()
    # A rerun reuses both finished trainings.
    shutil.rmtree(out / "eval")
    again = bench.main(argv + ["--gan_steps", "4"], feature_extractor=TinyFeatures())  # --train all: reused
    assert again["baseline_training"] == result["baseline_training"]
    speeds = bench.main(argv + ["--train", "none", "--speed_only", "--speed_rounds", "1"])["speeds"]
    assert [(r["system"], r["steps"]) for r in speeds] == [("ours", 1), ("ours", 4), ("diffusers DDIM", 2)]
    assert all(r["images_per_second"] > 0 for r in speeds) and (out / "speed.md").is_file()


def test_baseline_pipeline_is_seeded_per_image(setup):
    bench = load_benchmark()
    from prodimg import ProductImagePipeline

    te = bench._text_encoder_folder(str(setup / "pipe"), setup / "te")
    pipe = ProductImagePipeline.from_pretrained(setup / "pipe")
    unet = bench.baseline_unet(16, (8, 16), pipe.text_encoder.config.hidden_size)
    (setup / "te" / "baseline").mkdir()
    unet.save_pretrained(setup / "te" / "baseline" / "unet")
    base = bench.load_baseline(te, setup / "te")
    a = base(["red dress", "blue bag"], generator=[torch.Generator().manual_seed(s) for s in (1, 2)],
             num_inference_steps=3).images
    b = base(["blue bag"], generator=[torch.Generator().manual_seed(2)], num_inference_steps=3).images
    assert a.shape == (2, 16, 16, 3) and np.allclose(a[1], b[0], atol=1e-5)
    with pytest.raises(TypeError, match="prompt"):
        base([], num_inference_steps=2)
