"""train_scripts/train_product_gan.py and prodimg.training, with tiny components on CPU (offline).

Runs through ``accelerate launch`` (one process, and two DDP processes over gloo) are subprocesses;
the other runs call the trainer in-process (same code path, no interpreter start-up).
"""

from __future__ import annotations

import functools
import json
import operator
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prodimg import ProductImagePipeline
from prodimg.testing import (
    LaunchTimeout,
    free_port,
    make_tiny_pipeline,
    run_in_gloo_processes,
    run_launch,
    tiny_clip_model,
    tiny_discriminator,
    tiny_generator,
)
from prodimg.training import checkpointing as ckpt
from prodimg.training.augment import diff_augment
from prodimg.training.gan import (
    DEFAULT_DISCRIMINATOR_WARMUP,
    SUMMARY_FILE,
    GANTrainer,
    build_parser,
    main,
    parse_args,
    train_product_gan,
)
from prodimg.training.losses import mismatched_captions
from prodimg.training.precision import NonFiniteTrainingError
from prodimg.training.sampler import ResumableBatchSampler
from prodimg.training.state import flatten_state, load_state_files, save_state_files, unflatten_state

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "train_scripts" / "train_product_gan.py"
COLORS = ["red", "blue", "green", "black"]
CATEGORIES = ["dress", "bag", "sneaker", "shirt"]


def subprocess_env(tmp: Path) -> dict:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PRODIMG_METRICS_CACHE=str(tmp / "metrics-cache"),
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        HF_DATASETS_CACHE=str(tmp / "hf-datasets"),
    )
    return env


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """A saved tiny pipeline, a text-encoder-only folder, tiny configs, an imagefolder and a save_to_disk dataset."""
    root = tmp_path_factory.mktemp("train")
    pipe = make_tiny_pipeline()
    pipe.save_pretrained(root / "pipe")
    te = root / "text_encoder_only"
    te.mkdir()
    shutil.copytree(root / "pipe" / "text_encoder", te / "text_encoder")
    shutil.copytree(root / "pipe" / "tokenizer", te / "tokenizer")
    gcfg = {k: v for k, v in dict(tiny_generator().config).items() if not k.startswith("_")}
    (root / "gcfg.json").write_text(json.dumps(gcfg))
    dcfg = {k: v for k, v in dict(tiny_discriminator().config).items() if not k.startswith("_")}
    (root / "dcfg.json").write_text(json.dumps(dcfg))

    rng = np.random.default_rng(0)
    images, captions = [], []
    for i in range(16):
        arr = np.full((16, 16, 3), 255, np.uint8)
        arr[4:12, 4:12] = (rng.random(3) * 255).astype(np.uint8)
        images.append(Image.fromarray(arr))
        captions.append(f"{COLORS[i % 4]} {CATEGORIES[i // 4]}")
    folder = root / "imagefolder"
    folder.mkdir()
    with open(folder / "metadata.jsonl", "w") as f:
        for i, (im, cap) in enumerate(zip(images, captions)):
            im.save(folder / f"{i:03d}.png")
            f.write(json.dumps({"file_name": f"{i:03d}.png", "text": cap}) + "\n")

    import datasets

    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"image": images, "text": captions}, features=features),
            "validation": datasets.Dataset.from_dict(
                {"image": images[:6], "text": captions[:6]}, features=features
            ),
        }
    )
    dd.save_to_disk(str(root / "disk"))
    return root


def base_args(fx: Path, out: Path, **overrides) -> dict:
    args = {
        "pretrained_model_name_or_path": str(fx / "pipe"),
        "train_data_dir": str(fx / "imagefolder"),
        "resolution": 16,
        "train_batch_size": 4,
        "max_train_steps": 3,
        "output_dir": str(out),
        "discriminator_config": str(fx / "dcfg.json"),
        "checkpointing_steps": 2,
        "validation_steps": 2,
        "validation_prompts": ["red dress", "blue bag"],
        "num_validation_images": 2,
        "validation_fid_num_images": 0,
        "r1_interval": 2,
        "discriminator_warmup_steps": 0,  # the fixture pipeline has no discriminator: train G from step 1
        "report_to": "none",
        "seed": 0,
    }
    args.update(overrides)
    return args


def to_argv(args: dict) -> list[str]:
    from prodimg.training.gan import args_from_kwargs

    return args_from_kwargs(**args)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PRODIMG_METRICS_CACHE", str(tmp_path / "metrics-cache"))


# ------------------------------------------------------------------------------------- accelerate launch
@pytest.fixture(scope="module")
def single_run(fixtures, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    args = base_args(fixtures, out, report_to="tensorboard")
    cmd = [
        "accelerate",
        "launch",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(SCRIPT),
        *to_argv(args),
    ]
    proc = run_launch(cmd, env=subprocess_env(out.parent), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc


def test_accelerate_launch_single_process_gives_loadable_pipeline(single_run):
    out, _proc = single_run
    pipe = ProductImagePipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("red dress", generator=torch.Generator().manual_seed(0), output_type="np").images
    assert image.shape == (1, 16, 16, 3) and np.isfinite(image).all()
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["global_step"] == 3 and summary["nonfinite_steps_skipped"] == 0
    assert [s for s, _ in ckpt.complete_checkpoints(out)] == [2, 3]
    assert (out / "validation" / "step-0000002.png").is_file() and (out / "samples.png").is_file()
    assert (out / "discriminator" / "config.json").is_file()
    # Everything under the output folder is safetensors/JSON/PNG/text: no pickle anywhere.
    assert not [p for p in out.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".ckpt"}]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (out / "logs").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent), size_guidance={"images": 0})
        acc.Reload()
        tags |= set(acc.Tags()["scalars"]) | set(acc.Tags()["images"])
    for tag in [
        "loss/d_real",
        "loss/d_fake",
        "loss/d_match",
        "loss/g",
        "r1_penalty",
        "d_accuracy/real",
        "d_accuracy/fake",
        "skipped/nonfinite_total",
        "images_per_second",
        "lr/generator",
        "lr/discriminator",
        "validation/samples",
    ]:
        assert tag in tags, (tag, sorted(tags))


def test_model_card_content(single_run, fixtures):
    from huggingface_hub import ModelCard

    out, _ = single_run
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "text-to-image"
    text = card.text
    assert str(fixtures / "imagefolder") in text  # data
    assert "- **examples**: 16" in text and "- **resolution**: 16 px" in text
    assert "- **steps**: 3" in text and "- **images seen**: 12" in text  # steps
    assert "EMA weights of step 3" in text
    assert "## Metrics" in text and "No validation metrics" in text  # FID was off in this run
    assert "![samples](samples.png)" in text and "`red dress`; `blue bag`" in text  # sample grid
    assert '"block_out_channels"' in text and '"r1_gamma": 0.05' in text  # configs
    assert "hub_token" not in text


def test_push_to_hub_sends_exactly_the_pipeline_files(single_run, monkeypatch):
    from huggingface_hub.utils import filter_repo_objects

    from prodimg.training import hub

    out, _ = single_run
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, **kw):
            calls["create_repo"] = (repo_id, kw)

        def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **kw):
            root = Path(folder_path)
            files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
            calls["sent"] = list(
                filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)
            )
            calls["repo_id"] = repo_id
            return "commit"

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    hub.push_folder_to_hub(out, "me/prodimg-test", token="tok", private=True)
    assert calls["create_repo"] == (
        "me/prodimg-test",
        {"private": True, "exist_ok": True, "repo_type": "model"},
    )
    assert calls["token"] == "tok" and calls["repo_id"] == "me/prodimg-test"
    expected = {
        "README.md",
        "samples.png",
        "model_index.json",
        "scheduler/scheduler_config.json",
        "generator/config.json",
        "generator/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
    }
    sent = set(calls["sent"])
    assert expected <= sent
    assert {p for p in sent if not p.startswith("tokenizer/")} == expected
    assert all(not p.startswith(("checkpoint-", "logs/", "validation/", "discriminator/")) for p in sent)
    assert sent == set(hub.files_to_upload(out))


def _launch_ddp(fixtures, root: Path, timeout: float):
    out = root / "ddp"
    args = base_args(
        fixtures,
        out,
        train_batch_size=2,
        gradient_accumulation_steps=2,
        r1_interval=1,
        validation_steps=100,
        checkpointing_steps=100,
        num_validation_images=1,
    )
    cmd = [
        "accelerate",
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--main_process_port",
        str(free_port()),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(SCRIPT),
        *to_argv(args),
    ]
    return out, run_launch(cmd, env=subprocess_env(root), timeout=timeout)


def test_accelerate_launch_two_processes_ddp(fixtures, tmp_path):
    # About 20 s. Once, in the CI run after session 13, this run hung until its 300 s timeout; it has not
    # hung in 28 runs here since (9 of them beside a CPU-bound process). So a hang is retried once, in
    # fresh folders, and kept as a warning with the stack of every thread of every process (run_launch).
    # A second hang, or any error, fails.
    try:
        out, proc = _launch_ddp(fixtures, tmp_path / "try1", timeout=140)
    except LaunchTimeout as hang:
        warnings.warn(f"the 2-process DDP run hung and is retried once: {hang}", stacklevel=1)
        out, proc = _launch_ddp(fixtures, tmp_path / "try2", timeout=140)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["num_processes"] == 2 and summary["images_seen"] == 3 * 2 * 2 * 2
    digests = summary["parameter_digests"]  # G, D and EMA of each rank after training
    assert len(digests) == 2 and digests[0] == digests[1] and summary["replicas_identical"]
    final = out / "checkpoint-3"
    assert ckpt.checkpoint_problem(final) is None
    assert (final / "rng_state_rank0.json").is_file() and (final / "rng_state_rank1.json").is_file()
    ProductImagePipeline.from_pretrained(out)


# ------------------------------------------------------------------------------------- resume
def _resume_from(args: dict, straight: Path, step: int, resumed: Path) -> None:
    """Continue the run of ``args`` from ``straight``'s checkpoint-``step``, in the fresh folder ``resumed``."""
    resumed.mkdir()
    shutil.copytree(straight / f"checkpoint-{step}", resumed / f"checkpoint-{step}")
    train_product_gan(**{**args, "output_dir": str(resumed), "resume_from_checkpoint": "latest"})


def _assert_bitwise_equal(a: Path, b: Path) -> list[Path]:
    """Every safetensors file under checkpoint ``a`` is byte-identical under ``b``; returns their paths."""
    files = sorted(p.relative_to(a) for p in a.rglob("*.safetensors"))
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    return files


def test_resume_is_bitwise_identical(fixtures, tmp_path):
    """4 steps straight vs 2 steps + resume + 2 steps: identical G, D, EMA and optimizer states (bitwise:
    the CPU kernels are deterministic, the data order and every random draw are restored)."""
    straight = tmp_path / "straight"
    args = base_args(
        fixtures, straight, max_train_steps=4, checkpointing_steps=2, validation_steps=100, cond_drop_prob=0.3
    )
    train_product_gan(**args)
    resumed = tmp_path / "resumed"
    _resume_from(args, straight, 2, resumed)
    a = straight / "checkpoint-4"
    files = _assert_bitwise_equal(a, resumed / "checkpoint-4")
    assert {str(f) for f in files} >= {
        "generator/model.safetensors",
        "discriminator/model.safetensors",
        "ema.safetensors",
        "optimizer_g.safetensors",
        "optimizer_d.safetensors",
    }
    # and the steps in between really changed the weights
    assert (straight / "checkpoint-2" / "generator" / "model.safetensors").read_bytes() != (
        a / "generator" / "model.safetensors"
    ).read_bytes()


def test_sigkill_during_checkpoint_write_keeps_previous_checkpoint(fixtures, tmp_path, caplog):
    out = tmp_path / "killed"
    args = base_args(
        fixtures,
        out,
        max_train_steps=6,
        checkpointing_steps=2,
        checkpoints_total_limit=1,
        validation_steps=100,
    )
    env = subprocess_env(tmp_path)
    env[ckpt.SLEEP_ENV] = "4:120"  # sleep inside the write of checkpoint-4, after its weights are written
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *to_argv(args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    partial = out / ".checkpoint-4.incomplete"
    deadline = time.time() + 120
    try:
        while not (partial / "trainer.json").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "checkpoint-4 was never started"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    # With --checkpoints_total_limit 1 exactly one loadable checkpoint exists at any moment.
    assert [s for s, _ in ckpt.complete_checkpoints(out)] == [2]
    assert not (out / "checkpoint-4").exists() and partial.is_dir()
    caplog.set_level("INFO")
    assert ckpt.resolve_resume_checkpoint("latest", out) == out / "checkpoint-2"
    summary = train_product_gan(**{**args, "max_train_steps": 4, "resume_from_checkpoint": "latest"})
    assert f"Resuming from checkpoint {out / 'checkpoint-2'}" in caplog.text
    assert summary["global_step"] == 4
    assert [s for s, _ in ckpt.complete_checkpoints(out)] == [4] and not partial.exists()


def test_resume_latest_skips_incomplete_and_explicit_missing_path_is_an_error(fixtures, tmp_path, caplog):
    out = tmp_path / "run"
    (out / "checkpoint-9").mkdir(parents=True)  # no marker: an interrupted write
    caplog.set_level("INFO")
    assert ckpt.resolve_resume_checkpoint("latest", out) is None
    assert "Skipping incomplete checkpoint" in caplog.text and "starting a new training run" in caplog.text
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ckpt.resolve_resume_checkpoint(str(tmp_path / "nope"), out)
    with pytest.raises(ckpt.IncompleteCheckpointError, match="checkpoint_complete.json"):
        ckpt.resolve_resume_checkpoint("checkpoint-9", out)
    code = main(to_argv(base_args(fixtures, out, resume_from_checkpoint=str(tmp_path / "nope"))))
    assert code == 2 and not (out / "checkpoint-2").exists()


def test_checkpoint_with_truncated_file_is_incomplete(tmp_path):
    class Acc:
        is_main_process, process_index, num_processes = True, 0, 1

        def wait_for_everyone(self):
            pass

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    for step in (1, 2, 3):
        ckpt.save_checkpoint(
            Acc(), tmp_path, step, {"m": model}, {"opt": opt}, lambda: {"x": torch.ones(2)}, total_limit=2
        )
    assert [s for s, _ in ckpt.complete_checkpoints(tmp_path)] == [2, 3]
    f = tmp_path / "checkpoint-3" / "m" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-3])
    assert "has" in ckpt.checkpoint_problem(tmp_path / "checkpoint-3")
    assert ckpt.resolve_resume_checkpoint("latest", tmp_path) == tmp_path / "checkpoint-2"
    model2, opt2 = torch.nn.Linear(3, 2), None
    opt2 = torch.optim.AdamW(model2.parameters())
    rng, _ = ckpt.load_checkpoint(tmp_path / "checkpoint-2", {"m": model2}, {"opt": opt2})
    assert torch.equal(model2.weight, model.weight) and torch.equal(rng["x"], torch.ones(2))
    assert opt2.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])


# ------------------------------------------------------------------------------------- numerics
def test_forced_nonfinite_step_is_skipped_and_counted(fixtures, tmp_path, monkeypatch):
    """Also: a fresh generator from --generator_config on a text-encoder folder, and the --push_to_hub path."""
    from prodimg.training import hub

    sent = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kw):
            sent["repo"] = repo_id

        def upload_folder(self, *, folder_path, allow_patterns, **kw):
            sent["files"] = hub.files_to_upload(folder_path, allow_patterns)

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    monkeypatch.setenv("PRODIMG_TEST_FORCE_NONFINITE", "2")
    out = tmp_path / "nan"
    summary = train_product_gan(
        **base_args(
            fixtures,
            out,
            pretrained_model_name_or_path=str(fixtures / "text_encoder_only"),
            generator_config=str(fixtures / "gcfg.json"),
            validation_steps=100,
            push_to_hub=True,
            hub_model_id="me/tiny",
        )
    )
    assert summary["nonfinite_steps_skipped"] == 1 and summary["global_step"] == 3
    assert sent["repo"] == "me/tiny" and "generator/diffusion_pytorch_model.safetensors" in sent["files"]
    # the skipped step left the discriminator untouched: its optimizer stepped twice in three steps
    state = load_state_files(out / "checkpoint-3", "optimizer_d")
    assert int(state["state"][0]["step"]) == 2
    pipe = ProductImagePipeline.from_pretrained(out)
    assert list(pipe.generator.config.block_out_channels) == [8, 16]


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_time_budget_stops_with_a_checkpoint_and_a_saved_pipeline(fixtures, tmp_path, clock):
    out = tmp_path / f"budget-{clock}"
    summary = train_product_gan(**base_args(fixtures, out, max_train_steps=10_000, max_train_seconds=1e-9,
                                            train_time_clock=clock, validation_steps=100))
    assert summary["global_step"] == 0 and summary["stop_reason"].startswith("max_train_seconds")
    assert (out / "checkpoint-0").is_dir()
    ProductImagePipeline.from_pretrained(out)


def test_deadline_clocks():
    from prodimg.training.state import Deadline

    assert not Deadline(None).expired() and Deadline(1e-12, "cpu").expired()
    with pytest.raises(ValueError, match="clock"):
        Deadline(1.0, "sundial")
    with pytest.raises(ValueError, match="positive"):
        Deadline(0.0)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_runs(fixtures, tmp_path, precision):
    """fp16: autocast + loss scaling (overflow skips are calibration, not divergence); bf16: autocast only."""
    out = tmp_path / precision
    summary = train_product_gan(
        **base_args(
            fixtures,
            out,
            mixed_precision=precision,
            max_train_steps=2,
            r1_interval=1,
            validation_steps=100,
            checkpointing_steps=100,
            validation_prompts=["red dress"],
            num_validation_images=1,
        )
    )
    assert summary["global_step"] == 2 and summary["nonfinite_steps_skipped"] == 0
    state = load_state_files(out / "checkpoint-2", "precision")
    assert state["mode"] == precision
    assert (state["scaler"] is not None) == (precision == "fp16")
    if precision == "fp16":
        assert state["scaler"]["scale"] <= 65536.0
    pipe = ProductImagePipeline.from_pretrained(out)
    assert all(torch.isfinite(p).all() for p in pipe.generator.parameters())


def test_repeated_nonfinite_steps_stop_the_run_cleanly(fixtures, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PRODIMG_TEST_FORCE_NONFINITE", "3-")
    out = tmp_path / "diverged"
    argv = to_argv(
        base_args(
            fixtures,
            out,
            max_train_steps=10,
            checkpointing_steps=2,
            validation_steps=100,
            max_nonfinite_steps=2,
        )
    )
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "2 consecutive steps had a non-finite loss or gradient" in err
    assert f"the last good checkpoint is {out / 'checkpoint-2'}" in err
    assert [s for s, _ in ckpt.complete_checkpoints(out)] == [2]
    assert not (out / "model_index.json").exists()
    with pytest.raises(NonFiniteTrainingError):
        train_product_gan(
            **base_args(
                fixtures, tmp_path / "again", max_train_steps=10, validation_steps=100, max_nonfinite_steps=2
            )
        )


# ------------------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    "override, message",
    [
        ({"resolution": 24}, "--resolution must be a power of two"),
        ({"train_batch_size": 0}, "--train_batch_size must be > 0"),
        ({"diffaugment": "color,blur"}, "unknown DiffAugment policy"),
        ({"early_stopping_patience": 2}, "needs the validation FID"),
        ({"clip_guidance_model": "x", "clip_guidance_weight": 0}, "--clip_guidance_weight must be > 0"),
        ({"discriminator_warmup_steps": -1}, "--discriminator_warmup_steps must be >= 0"),
        ({"anchor_weight": -1}, "--anchor_weight must be >= 0"),
        ({"diversity_weight": -0.5}, "--diversity_weight must be a finite number >= 0, got -0.5"),
        ({"diversity_weight": float("nan")}, "--diversity_weight must be a finite number >= 0, got nan"),
        ({"anchor_weight": 1, "anchor_steps": 0}, "--anchor_steps must be >= 1"),
        ({"ddp_timeout": 0}, "--ddp_timeout must be > 0 seconds"),
        ({"adversarial_weight": -1}, "--adversarial_weight must be >= 0"),
        ({"adversarial_weight": 0, "anchor_weight": 1}, "so the generator needs --clip_guidance_model or --classifier"),
        ({"classifier_guidance_model": ".", "classifier_guidance_weight": 0}, "--classifier_guidance_weight must be > 0"),
        ({"classifier_guidance_model": "missing"}, "--classifier_guidance_model missing: no attribute classifier"),
        ({"classifier_guidance_heads": "category"}, "--classifier_guidance_heads needs --classifier_guidance_model"),
        (
            {"classifier_guidance_model": ".", "classifier_guidance_heads": "category=0"},
            "--classifier_guidance_heads: classifier guidance heads 'category=0': 'category' needs a finite",
        ),
        ({"adversarial_weight": 0, "clip_guidance_model": "x"}, "and --anchor_weight > 0"),
        (
            {"adversarial_weight": 0, "clip_guidance_model": "x", "anchor_weight": 1, "discriminator_warmup_steps": 2},
            "--discriminator_warmup_steps has nothing to warm up",
        ),
    ],
)
def test_bad_arguments_stop_before_training(fixtures, tmp_path, override, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(to_argv(base_args(fixtures, tmp_path / "out", **override)))
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ({"caption_column": "description"}, "column 'description' not found in the dataset"),
        ({"image_column": "picture"}, "column 'picture' not found in the dataset"),
        ({"resolution": 32}, "--resolution 32 differs from the pipeline generator's sample_size 16"),
        (
            {"anchor_weight": 1.0, "pretrained_model_name_or_path": "text_encoder_only", "generator_config": "gcfg"},
            "--anchor_weight needs a pipeline to start from",
        ),
        (
            {"diversity_weight": 1.0, "pretrained_model_name_or_path": "text_encoder_only", "generator_config": "gcfg"},
            "--diversity_weight needs a pipeline to start from",
        ),
    ],
)
def test_bad_dataset_or_model_stops_before_training(fixtures, tmp_path, override, message, capsys):
    out = tmp_path / "out"
    if "generator_config" in override:  # fixture names -> paths
        override = {**override, "pretrained_model_name_or_path": str(fixtures / "text_encoder_only"),
                    "generator_config": str(fixtures / "gcfg.json")}
    assert main(to_argv(base_args(fixtures, out, **override))) == 2
    assert message in capsys.readouterr().err
    assert not list(out.glob("checkpoint-*")) and not (out / "model_index.json").exists()


def _weights(out: Path, step: int, net: str) -> dict:
    from safetensors.torch import load_file

    return load_file(out / f"checkpoint-{step}" / net / "model.safetensors")


@pytest.mark.parametrize("warmup", [None, 2])
def test_discriminator_warmup_leaves_the_generator_alone(fixtures, tmp_path, monkeypatch, warmup):
    """A pretrained generator meeting a new discriminator: by default (and with the flag) the first steps
    train only the discriminator; the generator moves from the first step after the warm-up, and a run
    resumed from inside the warm-up ends bitwise where the straight run does."""
    from prodimg.training import gan

    monkeypatch.setattr(gan, "DEFAULT_DISCRIMINATOR_WARMUP", 2)  # the default, shrunk to the tiny run
    start = ProductImagePipeline.from_pretrained(fixtures / "pipe").generator.state_dict()
    out = tmp_path / "out"
    args = base_args(fixtures, out, discriminator_warmup_steps=warmup, checkpointing_steps=1)
    train_product_gan(**args)
    g2 = _weights(out, 2, "generator")
    assert all(torch.equal(g2[k], start[k].float()) for k in start)  # untouched through the warm-up
    d1, d2 = _weights(out, 1, "discriminator"), _weights(out, 2, "discriminator")
    assert any(not torch.equal(d1[k], d2[k]) for k in d1)  # the discriminator trains
    g3 = _weights(out, 3, "generator")
    assert any(not torch.equal(g3[k], g2[k]) for k in g2)  # the generator trains after it
    assert "new, 2 warm-up steps" in (out / "README.md").read_text()

    resumed = tmp_path / "resumed"
    _resume_from(args, out, 1, resumed)
    _assert_bitwise_equal(out / "checkpoint-3", resumed / "checkpoint-3")


def test_the_generator_lr_warmup_starts_after_the_discriminator_warmup(fixtures, tmp_path):
    """--lr_warmup_steps is not spent while only the discriminator trains: the generator's schedule counts the
    generator's own steps, the discriminator's counts from step 1."""
    out = tmp_path / "out"
    train_product_gan(
        **base_args(
            fixtures, out, discriminator_warmup_steps=2, checkpointing_steps=1,
            lr_scheduler="constant_with_warmup", lr_warmup_steps=2, learning_rate=2e-4,
        )
    )

    def next_lrs(step):  # the learning rates the step after `step` will use: (generator, discriminator)
        return tuple(
            json.loads((out / f"checkpoint-{step}" / f"lr_scheduler_{net}.json").read_text())["_last_lr"][0]
            for net in "gd"
        )

    assert [next_lrs(s) for s in (1, 2, 3)] == [(0.0, 1e-4), (0.0, 2e-4), (1e-4, 2e-4)]


def test_resumed_phases_are_recorded_in_checkpoints_summary_and_card(fixtures, tmp_path):
    """A run resumed with another recipe keeps each phase's steps and arguments: in every checkpoint (up to
    its own step), in training_summary.json and, merged and as differences, in the model card."""
    out = tmp_path / "out"
    args = base_args(fixtures, out, max_train_steps=2, checkpointing_steps=1, cond_drop_prob=0.3)
    train_product_gan(**args)
    later = {**args, "cond_drop_prob": 0.0, "resume_from_checkpoint": "latest"}
    train_product_gan(**{**later, "max_train_steps": 3})
    summary = train_product_gan(**{**later, "max_train_steps": 4, "checkpointing_steps": 2})
    phases = summary["phases"]
    assert [(p["from_step"], p["to_step"]) for p in phases] == [(0, 2), (2, 3), (3, 4)]
    assert [p["arguments"]["cond_drop_prob"] for p in phases] == [0.3, 0.0, 0.0]
    assert [p["arguments"]["max_train_steps"] for p in phases] == [2, 3, 4]
    assert "hub_token" not in phases[0]["arguments"]
    assert json.loads((out / "training_summary.json").read_text())["phases"] == phases
    saved = json.loads((out / "checkpoint-3" / "phases.json").read_text())["phases"]
    assert [(p["from_step"], p["to_step"]) for p in saved] == [(0, 2), (2, 3)]
    card = (out / "README.md").read_text()
    # the last two phases differ only in how long they ran and how often they saved: one line
    assert (
        "**phases**: steps 0-2: as below but --cond_drop_prob 0.3; steps 2-4: the training arguments below"
    ) in card

    # a checkpoint written before the history was kept: its steps are an unrecorded phase
    old = out / "checkpoint-4"
    (old / "phases.json").unlink()
    marker = json.loads((old / "checkpoint_complete.json").read_text())
    marker["states"].remove("phases")
    del marker["files"]["phases.json"]
    (old / "checkpoint_complete.json").write_text(json.dumps(marker))
    summary = train_product_gan(**{**later, "max_train_steps": 5})
    assert [(p["from_step"], p["to_step"], p["arguments"] is None) for p in summary["phases"]] == [
        (0, 4, True),
        (4, 5, False),
    ]
    assert "steps 0-4: not recorded" in (out / "README.md").read_text()


def test_phase_history_and_its_summary():
    from prodimg.training.state import PhaseHistory, TrainerState, summarize_phases

    state = TrainerState(step=3)
    history = PhaseHistory(state, {"lr": 1.0})
    with pytest.raises(ValueError, match="not a list of phases"):
        history.load_state_dict({"phases": [{"from_step": 0}]})
    with pytest.raises(ValueError, match="ends at step 2, its trainer state at step 3"):
        history.load_state_dict({"phases": [{"from_step": 0, "to_step": 2, "arguments": {"lr": 2.0}}]})
    history.load_state_dict({"phases": [{"from_step": 0, "to_step": 3, "arguments": {"lr": 2.0}}]})
    assert history.phases() == [{"from_step": 0, "to_step": 3, "arguments": {"lr": 2.0}}]  # no step yet
    state.step = 5
    assert history.state_dict()["phases"][-1] == {"from_step": 3, "to_step": 5, "arguments": {"lr": 1.0}}
    phases = [
        {"from_step": 0, "to_step": 2, "arguments": None},
        {"from_step": 2, "to_step": 4, "arguments": {"lr": 2.0, "steps": 4}},
        {"from_step": 4, "to_step": 6, "arguments": {"lr": 2.0, "steps": 6}},
        {"from_step": 6, "to_step": 7, "arguments": {"lr": 1.0, "steps": 7, "new": "x"}},
    ]
    assert summarize_phases(phases, {"lr": 1.0, "steps": 7, "new": "x"}, {"steps"}) == [
        "steps 0-2: not recorded (a checkpoint from a trainer that kept no history)",
        "steps 2-6: as below but --lr 2.0, --new None",
        "steps 6-7: the training arguments below",
    ]


def test_anchor_pulls_towards_the_starting_generator_also_after_a_resume(fixtures, tmp_path):
    """--anchor_weight: the MSE between the generator's x_0 and the frozen starting generator's is 0 on the first
    step (they are the same network) and positive once the generator has moved; its weight decays over
    --anchor_steps; a run resumed from a checkpoint anchors to the pipeline's generator (not the checkpoint's)
    and ends bitwise where the straight run does."""
    from prodimg.training.gan import GANTrainer
    from prodimg.training.sampler import endless_batches

    args = base_args(fixtures, tmp_path / "out", anchor_weight=1.0, anchor_steps=4, checkpointing_steps=1)
    trainer = GANTrainer(parse_args(to_argv(args)))
    batches = endless_batches(trainer.loader, trainer.sampler, trainer.state)
    first, second = (trainer.train_step([next(batches)])["loss/g_anchor"] for _ in range(2))
    assert first == 0.0 and second > 0.0
    assert [trainer.anchor_weight(s) for s in (1, 2, 5, 6)] == [1.0, 0.75, 0.0, 0.0]
    start = ProductImagePipeline.from_pretrained(fixtures / "pipe").generator.state_dict()
    assert all(torch.equal(v, start[k]) for k, v in trainer.anchor.state_dict().items())  # frozen

    out = tmp_path / "straight"
    train_product_gan(**{**args, "output_dir": str(out)})
    assert "generator**: weight 1.0, decayed to 0 over 4 generator steps" in (out / "README.md").read_text()
    resumed = tmp_path / "resumed"
    _resume_from(args, out, 2, resumed)
    _assert_bitwise_equal(out / "checkpoint-3", resumed / "checkpoint-3")


def test_diversity_floor_loss():
    """Penalised only for varying less than the reference, by how much less; its gradient reaches only the
    generator's outputs."""
    from prodimg.training.losses import diversity_floor_loss

    ref = torch.zeros(2, 3, 4, 4, requires_grad=True)  # the reference's draws differ by 1 everywhere
    ref2 = torch.ones(2, 3, 4, 4, requires_grad=True)
    x = torch.zeros(2, 3, 4, 4, requires_grad=True)
    x2 = torch.full((2, 3, 4, 4), 0.25).requires_grad_()
    loss, d, d_ref = diversity_floor_loss(x, x2, ref, ref2)
    assert (loss.item(), d.item(), d_ref.item()) == (0.75, 0.25, 1.0)
    loss.backward()
    assert x2.grad.lt(0).all() and x.grad.gt(0).all()  # the step pushes the two draws apart
    assert ref.grad is None and ref2.grad is None  # the reference is a target, not trained
    collapsed = diversity_floor_loss(x2, x2, ref, ref2)[0]
    assert collapsed.item() == 1.0
    more_varied = diversity_floor_loss(x.detach() - 1, x2.detach() + 1, ref, ref2)[0]
    assert more_varied.item() == 0.0
    mixed = diversity_floor_loss(torch.stack([x[0].detach(), x[1].detach() - 3]), x2.detach(), ref, ref2)[0]
    assert mixed.item() == pytest.approx(0.75 / 2)  # a sample that varies more does not pay for one that varies less
    with pytest.raises(ValueError, match="shapes differ"):
        diversity_floor_loss(x, x2, ref[:1], ref2)


def test_diversity_floor_trains_from_two_draws_in_one_forward(fixtures, tmp_path):
    """--diversity_weight: on the first step the generator is its start, so it varies exactly as much (loss 0)
    and both draws differ; with the anchor on, the anchor term still compares only the first draw; the model
    card records the weight; the default (0) draws once."""
    from prodimg.training.gan import GANTrainer
    from prodimg.training.sampler import endless_batches

    args = base_args(fixtures, tmp_path / "out", diversity_weight=2.0, anchor_weight=1.0, checkpointing_steps=1,
                     max_train_steps=2)
    trainer = GANTrainer(parse_args(to_argv(args)))
    calls = []
    trainer.G.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    batches = endless_batches(trainer.loader, trainer.sampler, trainer.state)
    first = trainer.train_step([next(batches)])
    b = args["train_batch_size"]
    assert calls[-1] == 2 * b and 2 * b not in calls[:-1]  # the generator phase: one forward of both draws
    assert first["loss/g_diversity"] == 0.0 and first["loss/g_anchor"] == 0.0
    assert first["diversity/generator"] == first["diversity/start"] > 0.0
    second = trainer.train_step([next(batches)])
    assert second["diversity/start"] > 0.0 and second["diversity/generator"] != second["diversity/start"]

    out = tmp_path / "run"
    train_product_gan(**{**args, "output_dir": str(out)})
    card = (out / "README.md").read_text()
    assert "diversity floor against the starting generator**: weight 2.0" in card
    assert "to the starting generator**: weight 1.0" in card
    only = tmp_path / "only"  # the floor alone builds the frozen start but no anchor term
    logs = GANTrainer(parse_args(to_argv({**args, "anchor_weight": 0.0, "output_dir": str(only)}))).train_step(
        [next(batches)]
    )
    assert "loss/g_diversity" in logs and "loss/g_anchor" not in logs
    plain = GANTrainer(parse_args(to_argv({**args, "diversity_weight": 0.0, "output_dir": str(tmp_path / "plain")})))
    calls.clear()
    plain.G.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    logs = plain.train_step([next(endless_batches(plain.loader, plain.sampler, plain.state))])
    assert calls[-1] == b and "loss/g_diversity" not in logs and "diversity/start" not in logs


def test_no_default_warmup_for_a_saved_discriminator_or_a_new_generator(fixtures, tmp_path):
    from prodimg.training.gan import discriminator_warmup, load_components

    first = tmp_path / "first"
    train_product_gan(**base_args(fixtures, first, max_train_steps=1))  # its output has discriminator/
    cases = {  # start -> (--discriminator_config, default warm-up)
        str(fixtures / "pipe"): (str(fixtures / "dcfg.json"), DEFAULT_DISCRIMINATOR_WARMUP),  # no saved D
        str(first): ("preset", 0),  # continues the saved discriminator
        str(fixtures / "text_encoder_only"): (str(fixtures / "dcfg.json"), 0),  # new generator too
    }
    for path, (d_config, expected) in cases.items():
        args = parse_args(
            to_argv(
                base_args(
                    fixtures,
                    tmp_path / "x",
                    pretrained_model_name_or_path=path,
                    discriminator_config=d_config,
                    generator_config=str(fixtures / "gcfg.json") if "text_encoder_only" in path else "preset",
                    discriminator_warmup_steps=None,
                )
            )
        )
        assert discriminator_warmup(args, load_components(args)) == expected, path


# ------------------------------------------------------------------------------------- validation
def test_early_stopping_keeps_the_best_generator(fixtures, tmp_path, monkeypatch):
    """FID itself is replaced by a scripted sequence (the real one needs Inception: see the slow test)."""
    from prodimg.training import gan, validation

    scores = iter([5.0, 3.0, 4.0, 4.5, 1.0])
    monkeypatch.setattr(gan, "fid_unavailable_reason", lambda: None)
    monkeypatch.setattr(validation.FIDEvaluator, "__call__", lambda self, pipe, g=1.0: next(scores))
    out = tmp_path / "early"
    summary = train_product_gan(
        **base_args(
            fixtures,
            out,
            pretrained_model_name_or_path=str(fixtures / "pipe"),
            dataset_name=str(fixtures / "disk"),
            train_data_dir=None,
            max_train_steps=10,
            validation_steps=1,
            checkpointing_steps=100,
            validation_fid_num_images=4,
            early_stopping_patience=2,
            num_validation_images=1,
        )
    )
    assert summary["global_step"] == 4 and summary["stop_reason"].startswith("early stopping")
    assert summary["best_fid"] == 3.0 and summary["best_fid_step"] == 2
    assert [h[1] for h in summary["fid_history"]] == [5.0, 3.0, 4.0, 4.5]
    best = json.loads((out / "best_ema_generator" / "best.json").read_text())
    assert best == {"step": 2, "fid": 3.0}
    from safetensors.torch import load_file

    saved = load_file(str(out / "generator" / "diffusion_pytorch_model.safetensors"))
    kept = load_file(str(out / "best_ema_generator" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(saved[k], kept[k]) for k in kept)
    assert "validation FID (best, step 2, 4 images) | 3" in (out / "README.md").read_text()
    assert ckpt.checkpoint_problem(out / "checkpoint-4") is None


@pytest.mark.slow
def test_validation_fid_with_inception(fixtures, tmp_path):
    summary = train_product_gan(
        **base_args(
            fixtures,
            tmp_path / "fid",
            dataset_name=str(fixtures / "disk"),
            train_data_dir=None,
            max_train_steps=2,
            validation_steps=2,
            validation_fid_num_images=6,
        )
    )
    assert summary["best_fid"] is not None and summary["best_fid"] > 0


# ------------------------------------------------------------------------------------- pieces
def test_state_round_trip_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), betas=(0.5, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "opt": opt.state_dict(),
        "t": (1, 2.5, None),
        "nan": float("nan"),
        "np": np.arange(3, dtype=np.uint32),
    }
    save_state_files(tmp_path, "s", state)
    back = load_state_files(tmp_path, "s")
    assert back["t"] == (1, 2.5, None) and np.isnan(back["nan"]) and back["np"].dtype == np.uint32
    assert back["opt"]["param_groups"][0]["betas"] == (0.5, 0.9)
    assert torch.equal(back["opt"]["state"][0]["exp_avg_sq"], opt.state_dict()["state"][0]["exp_avg_sq"])
    skeleton, tensors = flatten_state({"a": torch.ones(1)})
    assert unflatten_state(skeleton, tensors)["a"].equal(torch.ones(1))
    with pytest.raises(TypeError, match="without pickle"):
        flatten_state({"f": lambda x: x})


def test_diffaugment_is_identical_for_both_images_of_a_pair():
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    a, b = diff_augment([x, x.clone()], generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, x)
    y = torch.rand(6, 3, 16, 16) * 2 - 1
    a1, _ = diff_augment([x, y], generator=torch.Generator().manual_seed(1))
    a2, _ = diff_augment([x, x], generator=torch.Generator().manual_seed(1))
    # the colour shift uses per-image statistics, but the geometry (translation, cutout) is shared
    _, b1 = diff_augment([x, y], policy=("translation", "cutout"), generator=torch.Generator().manual_seed(2))
    _, b2 = diff_augment([y, y], policy=("translation", "cutout"), generator=torch.Generator().manual_seed(2))
    assert torch.equal(b1, b2) and torch.equal(a1, a2)


# ------------------------------------------------------------------------------------- CLIP guidance
@pytest.fixture(scope="module")
def clips(fixtures):
    """Two tiny CLIPs; the first one's text tower conditions the generator of runs started from it."""
    from prodimg.evaluation.clip import save_clip_judge
    from prodimg.text import load_clip_tokenizer

    for name, seed in (("clip", 0), ("other_clip", 1)):
        if not (fixtures / name).exists():
            model = tiny_clip_model(seed)
            save_clip_judge(fixtures / name, model, load_clip_tokenizer(), [0.5] * 3, [0.25] * 3)
    return fixtures / "clip", fixtures / "other_clip"


def test_clip_guidance_term_trains_the_generator(fixtures, clips, tmp_path, monkeypatch):
    from prodimg.training.clip_guidance import CLIPGuidance

    calls = []
    original = CLIPGuidance.loss

    def spy(self, images, text_embeds, keep=None, generator=None):
        value = original(self, images, text_embeds, keep, generator)
        calls.append((images.requires_grad, float(value.detach())))
        return value

    monkeypatch.setattr(CLIPGuidance, "loss", spy)
    out = tmp_path / "out"
    summary = train_product_gan(
        **base_args(
            fixtures,
            out,
            pretrained_model_name_or_path=str(clips[0]),
            generator_config=str(fixtures / "gcfg.json"),
            clip_guidance_model=str(clips[0]),
            clip_guidance_weight=2.0,
            max_train_steps=2,
            validation_steps=100,
        )
    )
    assert summary["global_step"] == 2
    assert len(calls) == 2 and all(grad and 0 <= v <= 2 for grad, v in calls)
    assert f"{clips[0]}, cosine, weight 2.0" in (out / "README.md").read_text()


def test_clip_guidance_by_a_clip_with_another_text_tower(fixtures, clips, tmp_path, monkeypatch):
    """The pipeline's own text encoder (tiny_text_encoder) embeds differently from this CLIP: guidance
    compares images with the guidance CLIP's own embeddings of the same captions."""
    from prodimg.training.clip_guidance import CLIPGuidance

    seen = []
    original = CLIPGuidance.loss

    def spy(self, images, text_embeds, keep=None, generator=None):
        seen.append(text_embeds)
        return original(self, images, text_embeds, keep, generator)

    monkeypatch.setattr(CLIPGuidance, "loss", spy)
    batches = []
    original_step = GANTrainer._generator_step

    def record(self, conds, add, **kwargs):
        batches.append([list(texts) for _, texts, *_ in conds])
        return original_step(self, conds, add, **kwargs)

    monkeypatch.setattr(GANTrainer, "_generator_step", record)
    out = tmp_path / "out"
    args = base_args(fixtures, out, clip_guidance_model=str(clips[1]), max_train_steps=2, validation_steps=100)
    assert train_product_gan(**args)["global_step"] == 2
    guide = CLIPGuidance.from_pretrained(str(clips[1]))
    for (texts,), embeds in zip(batches, seen):
        torch.testing.assert_close(embeds, guide.encode_texts(texts))
    assert len(seen) == 2


def test_adversarial_weight_zero_trains_without_a_discriminator(fixtures, clips, tmp_path, monkeypatch):
    """--adversarial_weight 0: no discriminator at all (none built, optimised, checkpointed or saved, though
    a --discriminator_config is given) and no warm-up; the generator learns from CLIP guidance and the
    anchor from step 1. A pipeline's own discriminator is kept as it was (frozen, not optimised or
    checkpointed). A checkpoint without one cannot be resumed with a discriminator."""
    from prodimg.training.sampler import endless_batches

    out = tmp_path / "out"
    args = base_args(
        fixtures, out, adversarial_weight=0.0, clip_guidance_model=str(clips[1]), anchor_weight=1.0,
        discriminator_warmup_steps=None, checkpointing_steps=1, max_train_steps=2, validation_steps=100,
    )
    assert args["discriminator_config"] != "preset"
    trainer = GANTrainer(parse_args(to_argv(args)))
    assert trainer.d_warmup == 0
    assert (trainer.D, trainer.opt_d, trainer.lr_d) == (None, None, None)
    assert trainer.components.discriminator_source == "none"
    batches = endless_batches(trainer.loader, trainer.sampler, trainer.state)
    logs = trainer.train_step([next(batches)])
    assert {"loss/g_clip", "loss/g_anchor"} <= set(logs)
    assert not {k for k in logs if k.startswith(("loss/d", "d_accuracy", "loss/g/", "lr/d"))} and "loss/g" not in logs

    train_product_gan(**args)
    for step in (1, 2):
        folder = out / f"checkpoint-{step}"
        assert ckpt.checkpoint_problem(folder) is None
        assert not (folder / "discriminator").exists()
        assert not list(folder.glob("*_d.*"))  # no discriminator optimizer or schedule
    g1, g2 = _weights(out, 1, "generator"), _weights(out, 2, "generator")
    assert any(not torch.equal(g1[k], g2[k]) for k in g1)
    card = (out / "README.md").read_text()
    assert "none (adversarial weight 0: none built)" in card and "### discriminator" not in card
    assert not (out / "discriminator").exists()  # an untrained one must not pass for a trained one later
    # resumed with --adversarial_weight 0 it continues; with a discriminator it says why it cannot
    assert train_product_gan(**{**args, "max_train_steps": 3, "resume_from_checkpoint": "latest"})["global_step"] == 3
    with pytest.raises(ValueError, match="has no discriminator: the run that wrote it had --adversarial_weight 0"):
        train_product_gan(**{**args, "adversarial_weight": 1.0, "clip_guidance_model": None, "anchor_weight": 0.0,
                             "max_train_steps": 4, "resume_from_checkpoint": "latest"})

    first, then = tmp_path / "first", tmp_path / "then"  # a pipeline with a trained D keeps it, as it was
    train_product_gan(**base_args(fixtures, first, max_train_steps=1))
    keep = {**args, "pretrained_model_name_or_path": str(first), "discriminator_config": "preset",
            "output_dir": str(then), "max_train_steps": 1}
    kept = GANTrainer(parse_args(to_argv(keep)))  # kept, frozen, and neither optimised nor checkpointed
    assert kept.components.discriminator_source == "saved"
    assert (kept.D, kept.opt_d, kept.lr_d) == (None, None, None)
    assert not any(p.requires_grad for p in kept.components.discriminator.parameters())
    del kept
    train_product_gan(**keep)
    assert "the loaded one saved as it was" in (then / "README.md").read_text()
    weights = "discriminator/diffusion_pytorch_model.safetensors"
    assert (then / weights).read_bytes() == (first / weights).read_bytes()
    assert not (then / "checkpoint-1" / "discriminator").exists() and not list((then / "checkpoint-1").glob("*_d.*"))
    assert train_product_gan(**{**keep, "max_train_steps": 2, "resume_from_checkpoint": "latest"})["global_step"] == 2
    assert (then / weights).read_bytes() == (first / weights).read_bytes()

    monkeypatch.setenv("PRODIMG_TEST_FORCE_NONFINITE", "1")  # without D, the generator's loss is the one forced
    nan = tmp_path / "nan"
    assert train_product_gan(**{**args, "output_dir": str(nan)})["nonfinite_steps_skipped"] == 1
    assert int(load_state_files(nan / "checkpoint-2", "optimizer_g")["state"][0]["step"]) == 1


@pytest.fixture(scope="module")
def labelled(fixtures):
    """The fixture's training images with a ClassLabel ``category`` column and a string ``pattern`` column
    (save_to_disk), and a tiny attribute classifier that knows those labels."""
    import datasets

    from prodimg.evaluation.classifier import AttributeClassifier

    root = fixtures / "labelled"
    if not root.exists():
        train = datasets.load_dataset("imagefolder", data_dir=str(fixtures / "imagefolder"), split="train")
        cats = [t.split(" ")[1] for t in train["text"]]
        train = train.add_column("category", [CATEGORIES.index(c) for c in cats])
        train = train.cast_column("category", datasets.ClassLabel(names=CATEGORIES))
        train = train.add_column("pattern", ["striped" if i % 2 else "solid" for i in range(len(train))])
        datasets.DatasetDict({"train": train, "validation": train.select(range(4))}).save_to_disk(str(root / "data"))
        torch.manual_seed(0)
        model = AttributeClassifier(sample_size=16, block_out_channels=(8, 16),
                                    category_names=("bag", "dress", "shirt", "sneaker", "coat"),
                                    pattern_names=("solid", "striped"))
        model.save_pretrained(root / "classifier", safe_serialization=True)
    return root


def test_classifier_guidance_loss(labelled):
    """Cross-entropy per head against each caption's label (mapped by name into the classifier's order),
    averaged over the kept rows with a label, summed over heads; ambiguous and unknown captions count 0."""
    from prodimg.training.augment import translate_on_white
    from prodimg.training.classifier_guidance import IGNORE, ClassifierGuidance

    guide = ClassifierGuidance.from_pretrained(labelled / "classifier")
    assert guide.heads == ["category", "pattern"] and not guide.model.training
    captions = ["red dress", "red dress", "blue bag", "odd one", "odd one"]
    columns = {"category": ["dress", "dress", "bag", "dress", "bag"],
               "pattern": ["striped", "striped", "solid", "solid", "solid"]}
    assert guide.build_labels(captions, columns) == {"category": 1, "pattern": 0}  # "odd one" is dress and bag
    labels = guide.labels(["red dress", "blue bag", "odd one", "never seen"])
    assert labels.tolist() == [[1, 1], [0, 0], [IGNORE, 0], [IGNORE, IGNORE]]

    images = torch.rand(4, 3, 16, 16) * 2 - 1
    texts = ["red dress", "blue bag", "odd one", "never seen"]
    keep = torch.tensor([True, False, True, True])
    value = guide.loss(images, texts, keep, torch.Generator().manual_seed(3))
    logits = guide.model(translate_on_white(images, torch.Generator().manual_seed(3))).logits
    lp = {h: torch.log_softmax(v, dim=1) for h, v in logits.items()}
    expected = -lp["category"][0, 1] + (-lp["pattern"][0, 1] - lp["pattern"][2, 0]) / 2  # row 1 dropped
    torch.testing.assert_close(value, expected)
    assert guide.loss(images, ["never seen"] * 4).item() == 0.0

    images.requires_grad_(True)
    guide.loss(images, texts).backward()
    assert images.grad.abs().sum() > 0 and all(p.grad is None for p in guide.model.parameters())

    with pytest.raises(ValueError, match="label column for each head; the training data has none for \\['pattern'\\]"):
        guide.build_labels(captions, {"category": columns["category"]})
    with pytest.raises(ValueError, match="does not know the data's labels \\['jacket'\\]"):
        guide.build_labels(captions, {**columns, "category": ["jacket"] + columns["category"][1:]})
    with pytest.raises(ValueError, match="heads must be some of"):
        ClassifierGuidance.from_pretrained(labelled / "classifier", heads=["colour"])

    weighted = ClassifierGuidance.from_pretrained(labelled / "classifier", heads={"category": 1, "pattern": 0.25})
    weighted.build_labels(captions, columns)
    value = weighted.loss(images.detach(), texts, keep, torch.Generator().manual_seed(3))
    parts = weighted.last_head_losses
    torch.testing.assert_close(parts["category"], -lp["category"][0, 1])
    torch.testing.assert_close(parts["pattern"], (-lp["pattern"][0, 1] - lp["pattern"][2, 0]) / 2)
    torch.testing.assert_close(value, parts["category"] + 0.25 * parts["pattern"])
    with pytest.raises(ValueError, match="finite and > 0, got \\{'pattern': 0.0\\}"):
        ClassifierGuidance.from_pretrained(labelled / "classifier", heads={"pattern": 0.0})


def test_parse_classifier_guidance_heads():
    from prodimg.training.classifier_guidance import format_heads, parse_heads

    assert parse_heads("category") == {"category": 1.0}
    assert parse_heads(" category , pattern = 0.2") == {"category": 1.0, "pattern": 0.2}
    assert format_heads(parse_heads("category,pattern=0.2")) == "category,pattern=0.2"
    assert format_heads({"category": 2.0}) == "category=2"
    for spec, message in [
        ("category,", "an empty head name"),
        ("category,category=2", "'category' given twice"),
        ("pattern=x", "'pattern' has weight 'x', not a number"),
        ("pattern=0", "'pattern' needs a finite weight > 0"),
        ("pattern=-1", "'pattern' needs a finite weight > 0"),
        ("pattern=inf", "'pattern' needs a finite weight > 0"),
        ("pattern=nan", "'pattern' needs a finite weight > 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_heads(spec)


def test_classifier_guidance_trains_the_generator_without_a_discriminator(fixtures, labelled, tmp_path):
    """The data's label columns (a ClassLabel and a string column) become the targets; with
    --adversarial_weight 0 the classifier's term alone (and the anchor) moves the generator."""
    from prodimg.training.sampler import endless_batches

    out = tmp_path / "out"
    args = base_args(
        fixtures, out, train_data_dir=None, dataset_name=str(labelled / "data"), adversarial_weight=0.0,
        classifier_guidance_model=str(labelled / "classifier"), classifier_guidance_weight=0.5,
        classifier_guidance_heads="category", anchor_weight=1.0, discriminator_warmup_steps=None,
        checkpointing_steps=1, max_train_steps=2, validation_steps=100,
    )
    trainer = GANTrainer(parse_args(to_argv(args)))
    guide = trainer.classifier_guidance
    assert guide.heads == ["category"]
    assert guide.labels(["red dress", "blue bag"]).tolist() == [[1], [0]]
    batches = endless_batches(trainer.loader, trainer.sampler, trainer.state)
    logs = trainer.train_step([next(batches)])
    assert {"loss/g_cls", "loss/g_anchor"} <= set(logs) and "loss/g" not in logs and logs["loss/g_cls"] > 0

    train_product_gan(**args)
    g1, g2 = _weights(out, 1, "generator"), _weights(out, 2, "generator")
    assert any(not torch.equal(g1[k], g2[k]) for k in g1)
    assert f"{labelled / 'classifier'}, heads category, weight 0.5" in (out / "README.md").read_text()

    both = tmp_path / "both"  # both heads; the string column's names are matched to the classifier's
    trainer = GANTrainer(parse_args(to_argv({**args, "output_dir": str(both), "classifier_guidance_heads": None})))
    assert trainer.classifier_guidance.labels(["red dress", "blue bag"]).tolist() == [[1, 0], [0, 1]]
    weighted = {**args, "output_dir": str(both), "classifier_guidance_heads": "category,pattern=0.25",
                "max_train_steps": 1}
    trainer = GANTrainer(parse_args(to_argv(weighted)))
    assert trainer.classifier_guidance.head_weights == {"category": 1.0, "pattern": 0.25}
    logs = trainer.train_step([next(endless_batches(trainer.loader, trainer.sampler, trainer.state))])
    parts = logs["loss/g_cls_category"] + 0.25 * logs["loss/g_cls_pattern"]
    assert logs["loss/g_cls"] == pytest.approx(parts, rel=1e-5)
    train_product_gan(**weighted)
    assert "heads category,pattern=0.25, weight 0.5" in (both / "README.md").read_text()
    bare = tmp_path / "bare"  # the fixture imagefolder has no label columns
    assert main(to_argv({**args, "output_dir": str(bare), "dataset_name": None,
                         "train_data_dir": str(fixtures / "imagefolder")})) == 2


def test_clip_guidance_loss():
    from prodimg.evaluation.clip import CLIPJudge
    from prodimg.metrics.clip_score import clip_preprocess
    from prodimg.text import load_clip_tokenizer
    from prodimg.training.clip_guidance import CLIPGuidance

    model = tiny_clip_model()
    guide = CLIPGuidance(CLIPJudge(model, load_clip_tokenizer(), [0.5] * 3, [0.25] * 3, "tiny"))
    gen = torch.Generator().manual_seed(0)
    uint8 = torch.randint(0, 256, (4, 16, 16, 3), generator=gen, dtype=torch.uint8)
    images = (uint8.permute(0, 3, 1, 2).float() / 255 * 2 - 1).requires_grad_(True)
    # Without the translation, the image side is exactly what the CLIP score sees.
    guide.translate = False
    pixels = clip_preprocess(uint8.numpy(), 16, [0.5] * 3, [0.25] * 3)
    expected = model.get_image_features(pixel_values=pixels)
    expected = getattr(expected, "pooler_output", expected)
    torch.testing.assert_close(guide.image_embeds(images), expected, atol=1e-5, rtol=1e-4)
    # The translation fills with white: a white image is unchanged by it.
    white = torch.ones(2, 3, 16, 16)
    plain = guide.image_embeds(white)
    guide.translate = True
    torch.testing.assert_close(guide.image_embeds(white, gen), plain)

    text = guide.text_embeds(["red dress", "blue bag", "green sneaker", "black shirt"])
    loss = guide.loss(images, text, generator=gen)
    (grad,) = torch.autograd.grad(loss, images)
    assert 0 <= float(loss.detach()) <= 2 and grad.abs().sum() > 0
    keep = torch.tensor([True, False, True, False])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    cos = torch.nn.functional.cosine_similarity(guide.image_embeds(images, g1), text)
    torch.testing.assert_close(guide.loss(images, text, keep, g2), (1 - cos[keep]).mean())
    (grad,) = torch.autograd.grad(guide.loss(images, text, keep), images)
    assert grad[1].abs().sum() == 0 and grad[3].abs().sum() == 0  # dropped rows get no gradient
    assert float(guide.loss(images, text, torch.zeros(4, dtype=torch.bool)).detach()) == 0


def test_clip_guidance_contrastive_objective():
    """contrastive: the cross-entropy of each kept row's caption among the kept rows' distinct captions
    (a repeated caption is one class), at the CLIP's temperature; 0 with fewer than two captions."""
    from prodimg.evaluation.clip import CLIPJudge
    from prodimg.text import load_clip_tokenizer
    from prodimg.training.clip_guidance import CLIPGuidance

    model = tiny_clip_model()
    judge = CLIPJudge(model, load_clip_tokenizer(), [0.5] * 3, [0.25] * 3, "tiny")
    guide = CLIPGuidance(judge, objective="contrastive")
    guide.translate = False
    assert guide.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    texts = ["red dress", "blue bag", "red dress", "black shirt", "green sneaker"]
    text = guide.text_embeds(texts)
    keep = torch.tensor([True, True, True, False, True])
    image = torch.nn.functional.normalize(guide.image_embeds(images), dim=-1)
    classes = guide.text_embeds(["red dress", "blue bag", "green sneaker"])  # black shirt's row is dropped
    logits = guide.logit_scale * image @ torch.nn.functional.normalize(classes, dim=-1).T
    target = torch.tensor([0, 1, 0, 0, 2])
    expected = torch.nn.functional.cross_entropy(logits[keep], target[keep])
    torch.testing.assert_close(guide.loss(images, text, keep), expected)
    images.requires_grad_(True)
    (grad,) = torch.autograd.grad(guide.loss(images, text, keep), images)
    assert grad[3].abs().sum() == 0 and grad[[0, 1, 2, 4]].abs().sum() > 0
    one = torch.tensor([True, False, True, False, False])  # two rows, one caption: nothing to contrast
    assert float(guide.loss(images, text, one).detach()) == 0
    # A caption encoded twice in one batch can differ in the last bits: still one class.
    twice = guide.encode_texts(["red dress", "blue bag", "red dress"])
    logits = guide.logit_scale * image[:3] @ torch.nn.functional.normalize(twice[:2], dim=-1).T
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0]))
    torch.testing.assert_close(guide.loss(images[:3].detach(), twice), expected)
    with pytest.raises(ValueError, match="objective must be one of cosine, contrastive"):
        CLIPGuidance(judge, objective="hinge")


_GUIDED = ["red dress", "blue bag", "red dress", "black shirt", "green sneaker", "white coat"]


def _contrastive_guide():
    """A contrastive guide of the tiny CLIP and six images for :data:`_GUIDED` (the same in every process)."""
    from prodimg.evaluation.clip import CLIPJudge
    from prodimg.text import load_clip_tokenizer
    from prodimg.training.clip_guidance import CLIPGuidance

    guide = CLIPGuidance(CLIPJudge(tiny_clip_model(), load_clip_tokenizer(), [0.5] * 3, [0.25] * 3, "tiny"),
                         objective="contrastive")
    guide.translate = False
    images = torch.rand(len(_GUIDED), 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return guide, images


def _guidance_rank(rank: int, world: int) -> dict:
    guide, images = _contrastive_guide()
    per = len(images) // world
    mine = images[rank * per : (rank + 1) * per].clone().requires_grad_(True)
    loss = guide.loss(mine, guide.text_embeds(_GUIDED[rank * per : (rank + 1) * per]))
    (grad,) = torch.autograd.grad(loss, mine)
    return {"loss": loss.detach(), "grad": grad}


def test_clip_guidance_contrastive_negatives_span_every_process(tmp_path):
    """Two gloo processes with three rows each: each row's caption competes with the distinct captions of
    all six rows (rank 0 alone holds only red dress and blue bag), so the processes' mean loss and
    gradients are those of one process with the whole batch."""
    world = 2
    ranks = run_in_gloo_processes(_guidance_rank, world, tmp_path)
    guide, images = _contrastive_guide()
    images.requires_grad_(True)
    whole = guide.loss(images, guide.text_embeds(_GUIDED))
    (grad,) = torch.autograd.grad(whole, images)
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / world, whole.detach())
    torch.testing.assert_close(torch.cat([r["grad"] for r in ranks]) / world, grad)
    alone = guide.loss(images[:3], guide.text_embeds(_GUIDED[:3]))  # rank 0's rows among its own captions
    assert abs(float(alone.detach()) - float(ranks[0]["loss"])) > 1e-3


def test_clip_guidance_text_embeddings():
    """Padded to the batch's longest caption, from the table, or encoded now: the same embeddings as
    CLIP's own text features at the pipeline's max-length padding."""
    from prodimg.evaluation.clip import CLIPJudge
    from prodimg.text import load_clip_tokenizer
    from prodimg.training.clip_guidance import CLIPGuidance

    model, tokenizer = tiny_clip_model(), load_clip_tokenizer()
    guide = CLIPGuidance(CLIPJudge(model, tokenizer, [0.5] * 3, [0.25] * 3, "tiny"))
    texts = ["red dress", "a long blue striped cotton bag with a handle", "green sneaker", "red dress"]
    tokens = tokenizer(texts, padding="max_length", max_length=guide.max_length, return_tensors="pt")
    with torch.no_grad():
        expected = model.get_text_features(**tokens)
    expected = getattr(expected, "pooler_output", expected)
    torch.testing.assert_close(guide.encode_texts(texts), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(guide.encode_texts(texts, batch_size=1), expected, atol=1e-5, rtol=1e-4)
    assert guide.precompute(texts[:2]) == 2 and guide.precompute(texts) == 1
    assert guide._table.shape == (3, guide.projection_dim)
    torch.testing.assert_close(guide.text_embeds(texts), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(guide.text_embeds(["black shirt", "red dress"])[1], expected[0], atol=1e-5, rtol=1e-4)
    assert guide._table.shape[0] == 3  # a caption outside the table is encoded, not added


def test_mismatched_captions_never_pair_identical_texts():
    texts = ["red dress", "red dress", "blue bag", "green shirt"]
    dropped = torch.tensor([False, False, False, True])
    for seed in range(5):
        index, valid = mismatched_captions(texts, dropped, torch.Generator().manual_seed(seed))
        for i, j in enumerate(index.tolist()):
            assert i != j
            if valid[i]:
                assert texts[i] != texts[j] and not dropped[i] and not dropped[j]


def test_batch_sampler_is_sharded_and_resumable():
    s0 = ResumableBatchSampler(20, 3, num_replicas=2, rank=0, seed=1)
    s1 = ResumableBatchSampler(20, 3, num_replicas=2, rank=1, seed=1)
    b0, b1 = list(s0), list(s1)
    assert len(b0) == len(b1) == 3
    assert not set(functools.reduce(operator.iadd, b0, [])) & set(functools.reduce(operator.iadd, b1, []))
    s0.set_position(0, 2)
    assert list(s0) == b0[2:]
    s0.set_position(1, 0)
    assert list(s0) != b0
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableBatchSampler(5, 3, num_replicas=2)


def test_parser_uses_diffusers_flag_names():
    flags = {opt for a in build_parser()._actions for opt in a.option_strings}
    for name in [
        "--pretrained_model_name_or_path",
        "--dataset_name",
        "--dataset_config_name",
        "--train_data_dir",
        "--image_column",
        "--caption_column",
        "--resolution",
        "--train_batch_size",
        "--max_train_steps",
        "--checkpointing_steps",
        "--checkpoints_total_limit",
        "--resume_from_checkpoint",
        "--mixed_precision",
        "--gradient_accumulation_steps",
        "--output_dir",
        "--push_to_hub",
        "--hub_model_id",
        "--seed",
        "--learning_rate",
        "--report_to",
        "--validation_steps",
        "--validation_prompts",
        "--generator_config",
        "--r1_gamma",
        "--r1_interval",
        "--cond_drop_prob",
        "--max_nonfinite_steps",
        "--early_stopping_patience",
    ]:
        assert name in flags, name
    assert "accelerate launch train_scripts/train_product_gan.py" in SCRIPT.read_text()
    assert GANTrainer.__doc__


def test_rng_state_from_another_device_type_reseeds_deterministically(caplog):
    """A checkpoint written on a GPU (16-byte Philox generator state) resumes on the CPU: the generator
    is reseeded from the saved state with a warning, the same way each time, instead of failing."""
    import logging

    from prodimg.training.state import capture_rng_state, restore_rng_state

    state = capture_rng_state({"train": torch.Generator().manual_seed(0)})
    state["generators"]["train"] = torch.arange(16, dtype=torch.uint8)  # what a CUDA generator saves
    draws = []
    for _ in range(2):
        g = torch.Generator().manual_seed(123)
        with caplog.at_level(logging.WARNING, logger="prodimg.training.state"):
            restore_rng_state(state, {"train": g})
        draws.append(torch.rand(4, generator=g))
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], torch.rand(4, generator=torch.Generator().manual_seed(123)))
    assert "another device type" in caplog.text
    state["generators"]["train"] = torch.arange(17, dtype=torch.uint8) * 0 + 7
    other = torch.Generator().manual_seed(123)
    restore_rng_state(state, {"train": other})
    assert not torch.equal(torch.rand(4, generator=other), draws[0])
    # a state of the right size is restored exactly, as before
    g = torch.Generator().manual_seed(5)
    same = capture_rng_state({"train": g})
    expected = torch.rand(3, generator=g)
    fresh = torch.Generator()
    restore_rng_state(same, {"train": fresh})
    assert torch.equal(torch.rand(3, generator=fresh), expected)
