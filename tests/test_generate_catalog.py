"""`prodimg generate --prompts FILE --out DIR`: imagefolder output, seeds, resume, bad rows, 2 processes.

Tiny pipeline saved to a temporary folder; CPU, offline.
"""

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prodimg.catalog_generation import (
    METADATA_NAME,
    image_is_complete,
    read_prompt_rows,
    row_seed,
)
from prodimg.cli import main
from prodimg.testing import free_port, make_tiny_pipeline, run_launch

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "red striped dress",
    "blue sneaker",
    "black leather bag",
    "white t-shirt, product photo",
    "green checked shirt",
    "a pair of brown trousers",
    "pink dotted scarf",
]


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe") / "tiny-pipe"
    make_tiny_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def prompts_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["sku", "text"])
        writer.writeheader()
        writer.writerows({"sku": f"SKU{i}", "text": t} for i, t in enumerate(PROMPTS))
    return path


def run_catalog(pipe_dir, prompts, out, *extra):
    argv = ["generate", "--prompts", str(prompts), "--out", str(out), "--pipeline", str(pipe_dir),
            "--batch_size", "3", "-n", "2", "--no_progress", *map(str, extra)]
    return main(argv)


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / METADATA_NAME).read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(pipe_dir, prompts_csv, tmp_path_factory):
    """One complete single-process run (the reference bytes for the other tests)."""
    out = tmp_path_factory.mktemp("ref") / "catalog"
    assert run_catalog(pipe_dir, prompts_csv, out) == 0
    return out


def test_output_is_an_imagefolder_dataset(reference):
    import datasets

    recs = records(reference)
    assert [r["file_name"] for r in recs] == [f"images/{i:06d}_{j}.png" for i in range(len(PROMPTS)) for j in range(2)]
    assert [r["text"] for r in recs] == [t for t in PROMPTS for _ in range(2)]
    assert [r["seed"] for r in recs] == [row_seed(0, i) + j for i in range(len(PROMPTS)) for j in range(2)]
    assert {r["pipeline"] for r in recs} == {recs[0]["pipeline"]} and recs[0]["pipeline"].startswith("tiny-pipe@")
    assert all(r["num_inference_steps"] == 4 and r["guidance_scale"] == 1.0 for r in recs)
    assert sorted(p.name for p in reference.iterdir()) == ["images", METADATA_NAME]  # journals merged away
    ds = datasets.load_dataset("imagefolder", data_dir=str(reference), split="train")
    assert ds.num_rows == 2 * len(PROMPTS)
    assert {"image", "text", "seed", "pipeline"} <= set(ds.column_names)
    assert ds[0]["image"].size == (16, 16) and ds[3]["text"] == PROMPTS[1]


def test_any_image_regenerates_alone(reference, pipe_dir, tmp_path):
    rec = records(reference)[9]  # row 4, image 1
    assert main(["generate", rec["text"], "--pipeline", str(pipe_dir), "--seed", str(rec["seed"]), "-n", "1",
                 "-o", str(tmp_path)]) == 0
    (alone,) = tmp_path.glob("*.png")
    a = np.asarray(Image.open(alone), dtype=int)
    b = np.asarray(Image.open(reference / rec["file_name"]), dtype=int)
    assert np.abs(a - b).max() <= 1  # batch of 1 vs batch of 3: float rounding at most flips one level


def test_seeds_are_deterministic_and_distinct():
    assert row_seed(0, 5) == row_seed(0, 5)
    seeds = {row_seed(s, r) for s in range(3) for r in range(200)}
    assert len(seeds) == 600 and all(0 <= s < 2**62 for s in seeds)


def test_resume_redoes_only_incomplete_rows(reference, pipe_dir, prompts_csv, tmp_path, capsys):
    out = tmp_path / "catalog"
    shutil.copytree(reference, out)
    # Row 1: a truncated image (its record is intact). Rows 5-6: metadata.jsonl torn in the middle
    # of row 5's second record. Row 6: its record only in a leftover journal, with a torn line after.
    png = out / "images/000001_0.png"
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    assert not image_is_complete(png, 16)
    lines = (out / METADATA_NAME).read_text().splitlines(keepends=True)
    (out / METADATA_NAME).write_text("".join(lines[:11]) + lines[11][:40])
    (out / ".metadata-rank00001.jsonl").write_text("".join(lines[12:14]) + lines[13][:25])
    untouched = out / "images/000000_0.png"
    before = untouched.stat().st_mtime_ns
    capsys.readouterr()
    assert run_catalog(pipe_dir, prompts_csv, out) == 0
    summary = capsys.readouterr().out
    assert "generated 2 of 7 valid rows (5 already done" in summary  # rows 1 and 5
    assert untouched.stat().st_mtime_ns == before
    assert tree(out) == tree(reference)


def test_bad_rows_are_reported_and_skipped_or_fatal(pipe_dir, tmp_path, capsys):
    src = tmp_path / "prompts.jsonl"
    lines = [
        json.dumps({"text": "red striped dress"}),
        json.dumps({"text": "   "}),  # row 1: empty
        json.dumps({"sku": "x"}),  # row 2: missing column
        "{not json",  # row 3
        "",  # blank lines are not rows
        json.dumps({"text": "word " * 90}),  # row 4: too long
        json.dumps({"text": 7}),  # row 5: not a string
        json.dumps({"text": "blue sneaker"}),
    ]
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "catalog"
    assert run_catalog(pipe_dir, src, out) == 2  # --on_bad_row error (the default): nothing generated
    err = capsys.readouterr().err
    for expected in ("row 1 (line 2): empty prompt", "row 2 (line 3): missing column 'text'",
                     "row 3 (line 4): not valid JSON", "row 4 (line 6): prompt too long: 92 tokens",
                     "row 5 (line 7): prompt must be a string, got int", "--on_bad_row skip"):
        assert expected in err
    assert not out.exists()

    assert run_catalog(pipe_dir, src, out, "--on_bad_row", "skip") == 0
    assert "skipping 5 bad row(s)" in capsys.readouterr().err
    assert [(r["row"], r["text"]) for r in records(out)] == [(0, "red striped dress")] * 2 + [(6, "blue sneaker")] * 2

    # A row that was done and is now bad keeps its image and record: nothing written is lost.
    lines[0] = json.dumps({"text": ""})
    src.write_text("\n".join(lines) + "\n")
    kept = (out / "images/000000_0.png").read_bytes()
    assert run_catalog(pipe_dir, src, out, "--on_bad_row", "skip") == 0
    assert [r["row"] for r in records(out)] == [0, 0, 6, 6]
    assert (out / "images/000000_0.png").read_bytes() == kept


def test_other_settings_are_refused_unless_overwrite(reference, pipe_dir, prompts_csv, tmp_path, capsys):
    out = tmp_path / "catalog"
    shutil.copytree(reference, out)
    assert run_catalog(pipe_dir, prompts_csv, out, "--seed", "1") == 2
    assert "other settings" in capsys.readouterr().err
    assert tree(out) == tree(reference)
    assert run_catalog(pipe_dir, prompts_csv, out, "--seed", "1", "--overwrite") == 0
    assert records(out)[0]["seed"] == row_seed(1, 0)


def test_dataset_source_and_column(pipe_dir, tmp_path):
    import datasets

    ds_dir = tmp_path / "ds"
    datasets.Dataset.from_dict({"caption": PROMPTS[:2], "n": [1, 2]}).save_to_disk(str(ds_dir))
    rows = read_prompt_rows(ds_dir, "caption")
    assert [(r.index, r.text) for r in rows] == [(0, PROMPTS[0]), (1, PROMPTS[1])]
    with pytest.raises(ValueError, match="column 'text' not found"):
        read_prompt_rows(ds_dir, "text")
    assert run_catalog(pipe_dir, ds_dir, tmp_path / "out", "--prompt_column", "caption", "-n", "1") == 0
    assert [r["text"] for r in records(tmp_path / "out")] == PROMPTS[:2]


def test_single_prompt_mode_still_works(pipe_dir, tmp_path):
    assert main(["generate", "red dress", "--pipeline", str(pipe_dir), "-n", "2", "--seed", "3", "-o", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["red-dress-seed3.png", "red-dress-seed4.png"]
    assert main(["generate", "--pipeline", str(pipe_dir)]) == 2
    assert main(["generate", "red dress", "--prompts", "x.csv", "--out", str(tmp_path)]) == 2


def test_two_processes_write_the_same_bytes(reference, pipe_dir, prompts_csv, tmp_path):
    out = tmp_path / "catalog"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), "-m", "prodimg.cli",
        "generate", "--prompts", str(prompts_csv), "--out", str(out), "--pipeline", str(pipe_dir),
        "--batch_size", "3", "-n", "2",
    ]
    res = run_launch(cmd, env=env, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "on 2 process(es)" in res.stdout
    assert "row/s" in res.stderr  # the progress bar
    assert tree(out) == tree(reference)


def test_dtype_option(pipe_dir, prompts_csv, tmp_path, capsys):
    from prodimg.backends import load_pipeline

    pipe = load_pipeline(str(pipe_dir), dtype="bfloat16")
    assert {p.dtype for p in pipe.generator.parameters()} == {torch.bfloat16}
    assert pipe.text_encoder.dtype == torch.bfloat16
    for dtype, out in (("float32", tmp_path / "fp32"), ("bfloat16", tmp_path / "bf16")):
        assert main(["generate", "red dress", "--pipeline", str(pipe_dir), "-n", "2", "-o", str(out), "--dtype", dtype]) == 0
    a, b = (np.asarray(Image.open(d / "red-dress-seed0.png"), dtype=np.float32) for d in (tmp_path / "fp32", tmp_path / "bf16"))
    assert a.shape == b.shape and np.abs(a - b).mean() < 8  # the same image up to bf16 rounding (0..255 scale)
    capsys.readouterr()
    assert main(["generate", "--prompts", str(prompts_csv), "--out", str(tmp_path / "cat"), "--pipeline", str(pipe_dir),
                 "--dtype", "bfloat16"]) == 2
    assert "catalogue mode (--prompts) runs eagerly in float32" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--dtype must be one of"):
        load_pipeline(str(pipe_dir), dtype="float64")
    with pytest.raises(ValueError, match="--dtype bfloat16 is for the pytorch backend"):
        load_pipeline(str(pipe_dir), backend="onnxruntime", dtype="bfloat16")


def _compile_matches_eager(pipe_dir):
    from prodimg.backends import load_pipeline

    eager, compiled = load_pipeline(str(pipe_dir)), load_pipeline(str(pipe_dir), compile=True)
    assert compiled.generator._compiled_call_impl is not None and eager.generator._compiled_call_impl is None
    assert list(compiled.generator.state_dict()) == list(eager.generator.state_dict())  # keys stay as saved
    a, b = (p("red dress", num_images_per_prompt=3, generator=torch.Generator().manual_seed(0),
              output_type="np").images for p in (eager, compiled))
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_compile_option(eager_compile, pipe_dir, prompts_csv, tmp_path, capsys):
    from prodimg.backends import load_pipeline

    _compile_matches_eager(pipe_dir)
    assert eager_compile == ["ProductGenerator"]
    out = tmp_path / "compiled"
    assert main(["generate", "red dress", "--pipeline", str(pipe_dir), "-n", "2", "-o", str(out),
                 "--compile"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["red-dress-seed0.png", "red-dress-seed1.png"]
    capsys.readouterr()
    assert main(["generate", "--prompts", str(prompts_csv), "--out", str(tmp_path / "cat"),
                 "--pipeline", str(pipe_dir), "--compile"]) == 2
    assert "--compile applies to one PROMPT" in capsys.readouterr().err
    assert not (tmp_path / "cat").exists()
    with pytest.raises(ValueError, match="--compile is for the pytorch backend"):
        load_pipeline(str(pipe_dir), backend="onnxruntime", compile=True)


@pytest.mark.slow
def test_compile_option_with_inductor(pipe_dir):
    torch._dynamo.reset()
    _compile_matches_eager(pipe_dir)
