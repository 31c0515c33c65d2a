"""Crash-resume chaos: kill training and catalogue generation with SIGKILL at random moments, rerun,
and check that nothing is lost or corrupted (issue #9, item 3).

:func:`chaos_training` trains a tiny pipeline (CPU, one thread) in a subprocess, ``kills`` times:
SIGKILL at a random moment of the training loop, or (every ``checkpoint_kill_every``-th kill) in the
middle of a checkpoint write (the checkpoint writer's test hook holds the write open after the weights
are on disk). After each kill it checks that

- every complete checkpoint is fully readable (all safetensors parse, all tensors finite) and an
  unfinished write is never chosen by ``--resume_from_checkpoint latest``;
- the run resumes from the newest complete checkpoint and the progress lost is at most one checkpoint
  interval (against the last step the progress bar showed before the kill);

then lets the run finish and compares every file of its final checkpoint and saved pipeline, byte for
byte, with an uninterrupted run of the same seed.

:func:`chaos_catalog` does the same for ``prodimg generate --prompts``: killed at random moments and
rerun, the output must hold every (row, image) exactly once, only complete PNGs, and be byte-identical
to an uninterrupted run.

Both return a report dict (kills, checks, failures); an empty ``failures`` list means the promise held.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import atomic_write_text

REPO = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO / "train_scripts" / "train_product_gan.py"
_STEP = re.compile(r"Steps:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")  # the trainer's progress bar


# ------------------------------------------------------------------------------------------ fixtures
def make_fixture(root: str | os.PathLike, num_images: int = 16, size: int = 16, seed: int = 0) -> Path:
    """A saved tiny pipeline (``pipe/``), tiny model configs (``g.json``, ``d.json``) and an imagefolder
    (``data/``: coloured squares with captions) under ``root``."""
    from PIL import Image

    from ..testing import make_tiny_pipeline, tiny_discriminator, tiny_generator

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    make_tiny_pipeline(sample_size=size).save_pretrained(root / "pipe")
    for name, module in (("g.json", tiny_generator()), ("d.json", tiny_discriminator())):
        config = {k: v for k, v in dict(module.config).items() if not k.startswith("_")}
        (root / name).write_text(json.dumps(config))
    data = root / "data"
    data.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    colors = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 160, 30), "black": (10, 10, 10)}
    lines = []
    for i in range(num_images):
        name, rgb = list(colors.items())[i % len(colors)]
        img = np.full((size, size, 3), 255, np.uint8)
        lo = int(rng.integers(2, size // 4))
        img[lo : size - lo, lo : size - lo] = rgb
        Image.fromarray(img).save(data / f"{i:03d}.png")
        lines.append(json.dumps({"file_name": f"{i:03d}.png", "text": f"{name} {'bag' if i % 2 else 'dress'}"}))
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    prompts = [json.dumps({"text": f"{c} {k} {i}"}) for i in range(12) for c in colors for k in ("bag", "dress")]
    (root / "prompts.jsonl").write_text("\n".join(prompts) + "\n")
    return root


def _env(threads: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS=str(threads),
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    env.pop("PRODIMG_TEST_CHECKPOINT_SLEEP", None)
    return env


def training_argv(fixture: Path, out: Path, steps: int, interval: int) -> list[str]:
    return [
        "--pretrained_model_name_or_path", str(fixture / "pipe"), "--train_data_dir", str(fixture / "data"),
        "--resolution", "16", "--train_batch_size", "4", "--max_train_steps", str(steps),
        "--discriminator_config", str(fixture / "d.json"), "--checkpointing_steps", str(interval),
        "--checkpoints_total_limit", "2", "--validation_steps", str(10**6), "--validation_fid_num_images", "0",
        "--r1_interval", "2", "--cond_drop_prob", "0.2", "--report_to", "none", "--seed", "0",
        "--discriminator_warmup_steps", "0",  # the fixture pipeline has no discriminator: train G from step 1
        "--resume_from_checkpoint", "latest", "--output_dir", str(out),
    ]


# ------------------------------------------------------------------------------------------ checks
def check_checkpoint_files(path: Path) -> str | None:
    """``None`` if every safetensors file of a checkpoint parses and holds only finite tensors."""
    import torch
    from safetensors import safe_open

    files = sorted(path.rglob("*.safetensors"))
    if not files:
        return f"{path}: no safetensors files"
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():  # noqa: SIM118 - safe_open is not a dict
                    t = st.get_tensor(key)
                    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                        return f"{f}: tensor {key!r} is not finite"
        except Exception as err:  # noqa: BLE001 - any failure to read is what this check reports
            return f"{f}: unreadable ({type(err).__name__}: {err})"
    return None


def _last_step_shown(log: str) -> int:
    steps = [int(m.group(1)) for m in _STEP.finditer(log)]
    return max(steps) if steps else 0


def _wait_for(predicate, proc: subprocess.Popen, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


# ------------------------------------------------------------------------------------------ training
def run_training(fixture: Path, out: Path, steps: int, interval: int, log: Path, env: dict | None = None,
                 timeout: float = 600) -> int:
    with open(log, "ab") as f:
        return subprocess.run([sys.executable, str(TRAIN_SCRIPT), *training_argv(fixture, out, steps, interval)],
                              env=env or _env(), stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                              check=False).returncode


def _final_files(out: Path, steps: int) -> dict[str, bytes]:
    from ..training.checkpointing import checkpoint_name

    files = {}
    for base in (out / checkpoint_name(steps), out / "generator", out / "discriminator", out / "text_encoder"):
        for f in sorted(base.rglob("*.safetensors")):
            files[str(f.relative_to(out))] = f.read_bytes()
    return files


def chaos_training(workdir: str | os.PathLike, kills: int = 20, seed: int = 0, steps: int | None = None,
                   interval: int = 4, checkpoint_kill_every: int = 3, fixture: Path | None = None,
                   log=print) -> dict[str, Any]:
    """``steps`` of training (default: 10 per kill, so that the run outlasts the kills)."""
    steps = steps or max(40, 10 * kills)
    from ..training.checkpointing import (
        SLEEP_ENV,
        checkpoint_name,
        complete_checkpoints,
        resolve_resume_checkpoint,
    )

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    fixture = fixture or make_fixture(work / "fixture")
    rng = random.Random(seed)
    report: dict[str, Any] = {"kills": 0, "kills_during_checkpoint_write": 0, "kills_during_steps": 0,
                              "resumes": 0, "checkpoints_verified": 0, "max_steps_lost": 0,
                              "checkpoint_interval": interval, "failures": []}
    started = time.perf_counter()

    ref = work / "reference"
    if ref.exists():
        shutil.rmtree(ref)
    code = run_training(fixture, ref, steps, interval, work / "reference.log")
    if code != 0:
        report["failures"].append(f"the uninterrupted reference run exited {code} (see {work / 'reference.log'})")
        return report
    reference = _final_files(ref, steps)

    out = work / "chaos"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    previous_resume = 0
    attempt = 0
    while report["kills"] < kills:
        attempt += 1
        if attempt > 4 * kills + 10:
            report["failures"].append(f"gave up after {attempt - 1} launches with {report['kills']} kills")
            break
        resume = resolve_resume_checkpoint("latest", out)
        resume_step = int(resume.name.rsplit("-", 1)[1]) if resume is not None else 0
        if resume_step < previous_resume:
            report["failures"].append(f"progress went backwards: resumed at {resume_step} after {previous_resume}")
        previous_resume = resume_step
        if resume_step >= steps:
            break  # finished between kills; the final launch below completes the run
        env = _env()
        during_write = (report["kills"] + 1) % checkpoint_kill_every == 0
        target = None
        if during_write:
            # The first checkpoint this launch will write, held open after its weights are on disk.
            target = (resume_step // interval + 1) * interval
            if target > steps:
                during_write = False
            else:
                env[SLEEP_ENV] = f"{target}:600"
        log_path = work / f"launch-{attempt:03d}.log"
        launched_at = time.time()
        with open(log_path, "wb") as f:
            proc = subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), *training_argv(fixture, out, steps, interval)],
                                    env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            if during_write:
                partial = out / f".{checkpoint_name(target)}.incomplete" / "trainer.json"
                # A killed earlier launch may have left this partial write behind: wait for this launch's.
                hit = _wait_for(lambda p=partial, t=launched_at: p.exists() and p.stat().st_mtime >= t, proc, timeout=300)
            else:
                hit = _wait_for(lambda lp=log_path, rs=resume_step: _last_step_shown(lp.read_text(errors="replace")) > rs,
                                proc, timeout=300)
                if hit:
                    time.sleep(rng.uniform(0.0, 1.5))
            _kill(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = log_path.read_text(errors="replace")
        if not hit or proc.returncode != -signal.SIGKILL:
            if proc.returncode == 0:
                break  # the run finished before the kill landed
            if not hit:
                report["failures"].append(f"launch {attempt}: exited {proc.returncode} before the kill ({log_path})")
                break
        report["kills"] += 1
        report["kills_during_checkpoint_write" if during_write else "kills_during_steps"] += 1
        if resume is not None:
            report["resumes"] += 1
            if f"Resuming from checkpoint {resume}" not in text:
                report["failures"].append(f"launch {attempt}: did not resume from {resume}")
        shown = _last_step_shown(text)
        # Integrity of what is on disk now.
        for step, path in complete_checkpoints(out):
            problem = check_checkpoint_files(path)
            report["checkpoints_verified"] += 1
            if problem:
                report["failures"].append(f"after kill {report['kills']}: complete checkpoint is corrupt: {problem}")
        latest = resolve_resume_checkpoint("latest", out)
        latest_step = int(latest.name.rsplit("-", 1)[1]) if latest is not None else 0
        if latest is not None and latest.name.startswith("."):
            report["failures"].append(f"an unfinished checkpoint was chosen for resuming: {latest}")
        lost = max(0, shown - latest_step)
        report["max_steps_lost"] = max(report["max_steps_lost"], lost)
        if lost > interval:
            report["failures"].append(f"kill {report['kills']}: {lost} steps lost (shown {shown}, "
                                      f"newest complete checkpoint {latest_step}, interval {interval})")
        log(f"  kill {report['kills']}/{kills} ({'checkpoint write' if during_write else 'training step'}): "
            f"step shown {shown}, resumable at {latest_step}")

    code = run_training(fixture, out, steps, interval, work / "final.log")
    if code != 0:
        report["failures"].append(f"the final resumed launch exited {code} (see {work / 'final.log'})")
    else:
        got = _final_files(out, steps)
        if sorted(got) != sorted(reference):
            report["failures"].append(f"final files differ: {sorted(set(got) ^ set(reference))}")
        differing = [k for k in reference if k in got and got[k] != reference[k]]
        if differing:
            report["failures"].append(f"final weights differ from the uninterrupted run: {differing}")
        report["final_files_compared"] = len(reference)
    report["seconds"] = time.perf_counter() - started
    return report


# ------------------------------------------------------------------------------------------ catalogue
def _catalog_cmd(fixture: Path, prompts: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "prodimg.cli", "generate", "--pipeline", str(fixture / "pipe"),
            "--prompts", str(prompts), "--out", str(out), "-n", "2", "--batch_size", "4",
            "--num_threads", "1", "--seed", "0", "--no_progress"]


def check_catalog(out: Path, expected_rows: int, images_per_row: int, size: int) -> list[str]:
    """Problems of a finished catalogue: every (row, image) exactly once, only complete images."""
    from PIL import Image

    problems = []
    meta = out / "metadata.jsonl"
    if not meta.is_file():
        return [f"{meta} is missing"]
    records = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
    keys = [(r["row"], r["file_name"]) for r in records]
    if len(keys) != len(set(keys)):
        problems.append(f"{len(keys) - len(set(keys))} duplicate metadata records")
    if len(set(keys)) != expected_rows * images_per_row:
        problems.append(f"{len(set(keys))} records, expected {expected_rows * images_per_row}")
    for r in records:
        try:
            with Image.open(out / r["file_name"]) as im:
                im.load()
                if im.size != (size, size):
                    problems.append(f"{r['file_name']}: size {im.size}")
        except Exception as err:  # noqa: BLE001
            problems.append(f"{r['file_name']}: not a complete image ({err})")
    return problems


def _partial_images(out: Path) -> list[str]:
    """Visible PNGs that do not decode (a truncated image taken for a finished one)."""
    from PIL import Image

    bad = []
    for f in sorted((out / "images").glob("*.png")) if (out / "images").is_dir() else []:
        try:
            with Image.open(f) as im:
                im.load()
        except Exception:  # noqa: BLE001
            bad.append(f.name)
    return bad


def _tree_bytes(out: Path) -> dict[str, bytes]:
    return {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*"))
            if f.is_file() and not f.name.startswith(".")}


def chaos_catalog(workdir: str | os.PathLike, kills: int = 20, seed: int = 0, fixture: Path | None = None,
                  rows: int | None = None, log=print) -> dict[str, Any]:
    """``rows`` prompts (default: 24 per kill, so that the run outlasts the kills)."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    fixture = fixture or make_fixture(work / "fixture")
    base = (fixture / "prompts.jsonl").read_text().splitlines()
    rows = rows or max(len(base), 24 * kills)
    prompts = work / "prompts.jsonl"
    texts = [json.loads(line)["text"] for line in base]
    prompts.write_text("".join(json.dumps({"text": f"{texts[i % len(texts)]}, v{i // len(texts)}"}) + "\n"
                               for i in range(rows)))
    rng = random.Random(seed)
    report: dict[str, Any] = {"kills": 0, "rows": rows, "images_per_row": 2, "failures": []}
    started = time.perf_counter()
    ref = work / "catalog-reference"
    shutil.rmtree(ref, ignore_errors=True)
    done = subprocess.run(_catalog_cmd(fixture, prompts, ref), env=_env(), capture_output=True, timeout=600, check=False)
    if done.returncode != 0:
        report["failures"].append(f"reference run exited {done.returncode}: {done.stderr.decode()[-2000:]}")
        return report
    reference = _tree_bytes(ref)
    out = work / "catalog-chaos"
    shutil.rmtree(out, ignore_errors=True)
    attempt = 0
    while report["kills"] < kills and attempt < 4 * kills + 10:
        attempt += 1
        before = len(list((out / "images").glob("*.png"))) if (out / "images").is_dir() else 0
        proc = subprocess.Popen(_catalog_cmd(fixture, prompts, out), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            hit = _wait_for(lambda b=before: (out / "images").is_dir()
                            and len(list((out / "images").glob("*.png"))) > b, proc, timeout=300)
            if hit:
                time.sleep(rng.uniform(0.0, 0.3))
            _kill(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode == 0:
            break  # everything was written before the kill landed
        report["kills"] += 1
        bad = _partial_images(out)
        if bad:
            report["failures"].append(f"kill {report['kills']}: truncated images visible: {bad[:5]}")
        n = len(list((out / "images").glob("*.png")))
        log(f"  catalogue kill {report['kills']}/{kills}: {n} images on disk")
    done = subprocess.run(_catalog_cmd(fixture, prompts, out), env=_env(), capture_output=True, timeout=600, check=False)
    if done.returncode != 0:
        report["failures"].append(f"final rerun exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    else:
        report["failures"] += check_catalog(out, rows, 2, 16)
        got = _tree_bytes(out)
        if got != reference:
            differing = sorted(k for k in set(got) | set(reference) if got.get(k) != reference.get(k))
            report["failures"].append(f"output differs from the uninterrupted run: {differing[:10]}")
        report["files_compared"] = len(reference)
    report["seconds"] = time.perf_counter() - started
    return report


def write_report(path: str | os.PathLike, report: dict) -> None:
    atomic_write_text(Path(path), json.dumps(report, indent=1, default=str))
