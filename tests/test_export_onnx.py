"""`prodimg export onnx` and the onnxruntime backend: same pipeline class, outputs within tolerance.

The fast tests export with torch's TorchScript-based exporter (seconds); the default dynamo
exporter (the same graphs, about 5x slower to run on 2 cores) is covered by a slow test.
"""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from prodimg import ProductImagePipeline
from prodimg.cli import main
from prodimg.export import FP32_TOLERANCE, OrtGenerator, OrtTextEncoder, load_onnx_pipeline
from prodimg.testing import make_tiny_pipeline

PROMPTS = ["red silk scarf", "blue striped t-shirt, product photo", "black leather bag"]


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe") / "tiny-pipe"
    make_tiny_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def torch_pipe(pipe_dir):
    pipe = ProductImagePipeline.from_pretrained(pipe_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def export_dir(pipe_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    calib = root / "calib.jsonl"
    calib.write_text("".join(json.dumps({"text": p}) + "\n" for p in PROMPTS + ["green dress", "pink sneaker"]))
    out = root / "tiny-onnx"
    assert main(["export", "onnx", "--pipeline", str(pipe_dir), "--out", str(out), "--int8",
                 "--exporter", "torchscript", "--calibration_prompts", str(calib)]) == 0
    return out


def seeded(n):
    return [torch.Generator().manual_seed(100 + i) for i in range(n)]


def test_export_folder_layout(export_dir):
    index = json.loads((export_dir / "onnx_index.json").read_text())
    assert index["format"] == "prodimg-onnx" and index["source_pipeline"].startswith("tiny-pipe@")
    assert index["files"] == {"text_encoder": "text_encoder/model.onnx", "generator": "generator/model.onnx",
                              "generator_int8": "generator/model.int8.onnx"}
    for rel in [*index["files"].values(), "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json",
                "generator/config.json", "text_encoder/config.json"]:
        assert (export_dir / rel).is_file(), rel
    assert max(index["export_check_max_abs_error"].values()) < 1e-4  # checked at batch 3, traced at batch 2


KWARGS = {"num_images_per_prompt": 2, "guidance_scale": 3.0, "output_type": "np"}  # guidance: both text branches


@pytest.fixture(scope="module")
def reference(torch_pipe):
    return torch_pipe(PROMPTS, generator=seeded(6), **KWARGS).images


def test_onnxruntime_matches_pytorch(export_dir, torch_pipe, reference):
    ort_pipe = load_onnx_pipeline(export_dir)
    ort_pipe.set_progress_bar_config(disable=True)
    assert isinstance(ort_pipe, ProductImagePipeline)
    assert isinstance(ort_pipe.generator, OrtGenerator) and isinstance(ort_pipe.text_encoder, OrtTextEncoder)
    got = ort_pipe(PROMPTS, generator=seeded(6), **KWARGS).images
    assert got.shape == reference.shape == (6, 16, 16, 3)
    assert np.abs(got - reference).max() < FP32_TOLERANCE
    one = ort_pipe(PROMPTS[1], generator=seeded(1), output_type="np").images  # batch 1 (dynamic axis), no guidance
    ref_one = torch_pipe(PROMPTS[1], generator=seeded(1), output_type="np").images
    assert np.abs(one - ref_one).max() < FP32_TOLERANCE


def test_int8_generator_runs_close_to_fp32(export_dir, reference):
    int8 = load_onnx_pipeline(export_dir, int8=True)
    int8.set_progress_bar_config(disable=True)
    got = int8(PROMPTS, generator=seeded(6), **KWARGS).images
    diff = np.abs(got - reference)
    assert 0 < diff.max() < 0.5 and diff.mean() < 0.05
    assert int8.pipeline_id.startswith(json.loads((export_dir / "onnx_index.json").read_text())["source_pipeline"])
    assert "+onnx-int8@" in int8.pipeline_id


def test_generate_cli_with_onnxruntime_backend(export_dir, pipe_dir, tmp_path):
    prompts = tmp_path / "p.csv"
    prompts.write_text("text\n" + "\n".join(PROMPTS) + "\n")
    out = tmp_path / "catalog"
    assert main(["generate", "--prompts", str(prompts), "--out", str(out), "--pipeline", str(export_dir),
                 "--backend", "onnxruntime", "--no_progress"]) == 0
    recs = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and "+onnx@" in recs[0]["pipeline"]
    assert main(["generate", PROMPTS[0], "--pipeline", str(export_dir), "--backend", "onnxruntime", "--int8",
                 "-n", "1", "-o", str(tmp_path / "single")]) == 0
    assert len(list((tmp_path / "single").glob("*.png"))) == 1
    # wrong combinations fail with a message (exit code 2), not a traceback
    assert main(["generate", PROMPTS[0], "--pipeline", str(export_dir), "-o", str(tmp_path)]) == 2
    assert main(["generate", PROMPTS[0], "--pipeline", str(pipe_dir), "--int8", "-o", str(tmp_path)]) == 2
    assert main(["generate", PROMPTS[0], "--pipeline", str(pipe_dir), "--backend", "onnxruntime", "-o", str(tmp_path)]) == 2


def test_export_refuses_existing_out(export_dir, pipe_dir, capsys):
    assert main(["export", "onnx", "--pipeline", str(pipe_dir), "--out", str(export_dir)]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_dynamo_exporter_matches_pytorch(torch_pipe, reference, tmp_path):
    from prodimg.catalog_generation import pipeline_id
    from prodimg.export import export_onnx

    export_onnx(torch_pipe, tmp_path / "onnx", source_id=pipeline_id(torch_pipe, "tiny"), exporter="dynamo")
    ort_pipe = load_onnx_pipeline(tmp_path / "onnx")
    ort_pipe.set_progress_bar_config(disable=True)
    got = ort_pipe(PROMPTS, generator=seeded(6), **KWARGS).images
    assert np.abs(got - reference).max() < FP32_TOLERANCE


def test_eval_runs_the_int8_export_on_onnxruntime(export_dir, pipe_dir, torch_pipe, tmp_path, monkeypatch):
    from test_eval import make_labeled_dataset

    from prodimg.evaluation.evaluate import run_eval

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    size = int(torch_pipe.generator.config.sample_size)
    data = make_labeled_dataset(tmp_path / "data", {"test": 4}, size=size)
    reports = {}
    for backend, int8 in (("pytorch", False), ("onnxruntime", True)):
        path = export_dir if backend == "onnxruntime" else pipe_dir
        reports[backend] = run_eval(str(path), str(data), "test", num_images=4, batch_size=2,
                                    metrics=["color_accuracy"], output_dir=None, backend=backend, int8=int8)
    assert reports["onnxruntime"]["backend"] == "onnxruntime-int8" and reports["pytorch"]["backend"] == "pytorch"
    assert 0 <= reports["onnxruntime"]["metrics"]["color_accuracy"] <= 1
    assert main(["eval", "--pipeline", str(export_dir), "--dataset", str(data), "--int8",
                 "--output_dir", str(tmp_path / "r")]) == 2  # --int8 without --backend onnxruntime
