"""Numerics guards (issue #9, part 4): NaN/Inf injected into data, loss and gradients.

Each non-finite step is skipped (no optimizer step, no EMA update) and counted in the run summary
(``nonfinite_steps_skipped``); training goes on; the saved pipeline holds only finite weights.
``save_pretrained`` refuses non-finite weights without leaving a partial folder, and the Hub push
refuses to publish a folder whose weights hold NaN or Inf. Trainings are tiny and run in-process.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from prodimg import ProductImagePipeline
from prodimg.data.embedding_cache import PromptEmbeddingCache
from prodimg.testing import make_tiny_pipeline
from prodimg.training import gan, hub
from prodimg.training.gan import GANTrainer, args_from_kwargs, build_parser

CAPTIONS = ["red dress", "blue bag", "green sneaker", "black shirt"]
POISONED_CAPTION = "blue bag"
STEPS = 6


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train ~100x faster on one thread than on two contended ones (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PRODIMG_METRICS_CACHE", str(tmp_path / "metrics-cache"))
    monkeypatch.delenv("PRODIMG_TEST_FORCE_NONFINITE", raising=False)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    """A saved tiny pipeline, a tiny discriminator config and an 8-image imagefolder."""
    from prodimg.testing import tiny_discriminator

    root = tmp_path_factory.mktemp("numerics")
    make_tiny_pipeline().save_pretrained(root / "pipe")
    dcfg = {k: v for k, v in dict(tiny_discriminator().config).items() if not k.startswith("_")}
    (root / "dcfg.json").write_text(json.dumps(dcfg))
    folder = root / "imagefolder"
    folder.mkdir()
    rng = np.random.default_rng(0)
    with open(folder / "metadata.jsonl", "w") as f:
        for i in range(8):
            arr = np.full((16, 16, 3), 255, np.uint8)
            arr[4:12, 4:12] = (rng.random(3) * 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / f"{i:03d}.png")
            f.write(json.dumps({"file_name": f"{i:03d}.png", "text": CAPTIONS[i % 4]}) + "\n")
    return root


def make_trainer(fx: Path, out: Path, **overrides) -> GANTrainer:
    args = {
        "pretrained_model_name_or_path": str(fx / "pipe"),
        "train_data_dir": str(fx / "imagefolder"),
        "resolution": 16,
        "train_batch_size": 4,
        "max_train_steps": STEPS,
        "output_dir": str(out),
        "discriminator_config": str(fx / "dcfg.json"),
        "checkpointing_steps": 1000,
        "validation_steps": 1000,
        "validation_fid_num_images": 0,
        "num_validation_images": 0,
        "r1_interval": 2,
        "cond_drop_prob": 0.0,
        "discriminator_warmup_steps": 0,  # the fixture pipeline has no discriminator: train G from step 1
        "report_to": "none",
        "seed": 0,
    }
    args.update(overrides)
    return GANTrainer(build_parser().parse_args(args_from_kwargs(**args)))


def optimizer_steps(optimizer) -> int:
    """How many times ``optimizer`` stepped (AdamW's per-parameter counter)."""
    states = [s for s in optimizer.state.values() if "step" in s]
    return int(states[0]["step"]) if states else 0


def assert_finite_output(out: Path) -> None:
    """The saved pipeline (and the saved discriminator) hold only finite weights."""
    pipe = ProductImagePipeline.from_pretrained(out)  # also refuses non-finite weights itself
    for module in (pipe.generator, pipe.text_encoder):
        assert all(torch.isfinite(p).all() for p in module.parameters())
    for path in [*out.glob("*/*.safetensors")]:
        assert all(torch.isfinite(t).all() for t in load_file(path).values() if t.is_floating_point()), path


class GuardedStepSpy:
    """Wraps ``gan.guarded_step`` (called for D, then G, once per training step); optionally poisons
    the gradients of one phase at chosen steps before the guard looks at them."""

    def __init__(self, poison: dict[tuple[int, str], float] | None = None):
        self.calls = 0
        self.poison = poison or {}
        self.stepped: list[tuple[int, str, bool]] = []
        self.original = gan.guarded_step

    def __call__(self, optimizer, parameters, loss_finite, *args, **kwargs):
        step, phase = self.calls // 2 + 1, ("discriminator", "generator")[self.calls % 2]
        self.calls += 1
        params = list(parameters)
        value = self.poison.get((step, phase))
        if value is not None:
            grads = [p for p in params if p.grad is not None]
            assert grads, "nothing to poison"
            grads[len(grads) // 2].grad.view(-1)[0] = value
        result = self.original(optimizer, params, loss_finite, *args, **kwargs)
        self.stepped.append((step, phase, result.stepped))
        return result


# ------------------------------------------------------------------------------------- training
def test_forced_nonfinite_hook_skips_counts_and_publishes_finite_weights(fixtures, tmp_path, monkeypatch):
    """The trainer's own injection hook (NaN discriminator loss at steps 2 and 3, consecutive), with the
    Hub push intercepted: the run finishes, both steps are counted, and what is sent is finite."""
    sent = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kw):
            sent["repo"] = repo_id

        def upload_folder(self, *, folder_path, allow_patterns, **kw):
            sent["files"] = hub.files_to_upload(folder_path, allow_patterns)

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    monkeypatch.setenv("PRODIMG_TEST_FORCE_NONFINITE", "2,3")
    spy = GuardedStepSpy()
    monkeypatch.setattr(gan, "guarded_step", spy)
    out = tmp_path / "forced"
    trainer = make_trainer(fixtures, out, push_to_hub=True, hub_model_id="me/tiny", max_nonfinite_steps=3)
    summary = trainer.train()
    assert summary["nonfinite_steps_skipped"] == 2 and summary["global_step"] == STEPS
    skipped = {(s, p) for s, p, ok in spy.stepped if not ok}
    assert {s for s, _ in skipped} == {2, 3}
    assert optimizer_steps(trainer.opt_d) == STEPS - 2
    assert "generator/diffusion_pytorch_model.safetensors" in sent["files"]
    for rel in sent["files"]:
        if rel.endswith(".safetensors"):
            assert all(torch.isfinite(t).all() for t in load_file(out / rel).values())
    assert_finite_output(out)


def test_nan_in_cached_prompt_embedding_is_skipped_and_counted(fixtures, tmp_path, monkeypatch):
    """Data: the on-disk prompt-embedding cache holds a NaN row for one caption. Every step whose batch
    uses that caption is skipped and counted; the other steps train; the weights stay finite."""
    cache_dir = tmp_path / "embeds"
    source = ProductImagePipeline.from_pretrained(fixtures / "pipe")
    cache = PromptEmbeddingCache(source.text_encoder, source.tokenizer, cache_dir=cache_dir, max_length=77)
    cache.precompute(CAPTIONS + [""])
    hidden, mask, pooled = cache._rows[POISONED_CAPTION]
    cache._rows[POISONED_CAPTION] = (hidden, mask, torch.full_like(pooled, float("nan")))
    cache.save()

    poisoned_steps = []
    original = GANTrainer._condition

    def recording_condition(self, texts):
        out = original(self, texts)
        if not all(torch.isfinite(t).all() for t in (out[0], out[2])):
            poisoned_steps.append(self.state.step + 1)
        return out

    monkeypatch.setattr(GANTrainer, "_condition", recording_condition)
    out = tmp_path / "cache-nan"
    trainer = make_trainer(fixtures, out, embedding_cache_dir=str(cache_dir), max_nonfinite_steps=STEPS)
    assert trainer.cache.num_encoded == 0, "the trainer re-encoded instead of using the poisoned cache"
    summary = trainer.train()
    assert 0 < len(poisoned_steps) < STEPS
    assert summary["nonfinite_steps_skipped"] == len(poisoned_steps)
    assert summary["global_step"] == STEPS
    assert optimizer_steps(trainer.opt_g) == STEPS - len(poisoned_steps)
    assert_finite_output(out)


def test_nan_generator_loss_is_skipped_and_counted(fixtures, tmp_path, monkeypatch):
    """Loss: the generator loss is NaN at step 3 only; D still steps there, G does not."""
    calls = []
    original = gan.generator_loss

    def nan_at_step_3(logits):
        calls.append(1)
        loss = original(logits)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(gan, "generator_loss", nan_at_step_3)
    out = tmp_path / "loss-nan"
    trainer = make_trainer(fixtures, out)
    summary = trainer.train()
    assert summary["nonfinite_steps_skipped"] == 1 and summary["global_step"] == STEPS
    assert optimizer_steps(trainer.opt_d) == STEPS
    assert optimizer_steps(trainer.opt_g) == STEPS - 1
    assert_finite_output(out)


@pytest.mark.parametrize(
    "poison",
    [
        {(2, "generator"): float("nan")},
        {(2, "discriminator"): float("inf"), (5, "generator"): float("-inf")},
    ],
    ids=["nan-generator-grad", "inf-discriminator-and-generator-grads"],
)
def test_nonfinite_gradients_with_finite_loss_are_skipped_and_counted(
    fixtures, tmp_path, monkeypatch, poison
):
    """Gradients: one gradient entry is NaN/Inf although the loss is finite; that optimizer skips."""
    spy = GuardedStepSpy(poison)
    monkeypatch.setattr(gan, "guarded_step", spy)
    out = tmp_path / "grad"
    trainer = make_trainer(fixtures, out)
    summary = trainer.train()
    assert summary["nonfinite_steps_skipped"] == len({step for step, _ in poison})
    assert {(s, p) for s, p, ok in spy.stepped if not ok} == set(poison)
    for phase, opt in (("discriminator", trainer.opt_d), ("generator", trainer.opt_g)):
        assert optimizer_steps(opt) == STEPS - sum(p == phase for _, p in poison)
    assert_finite_output(out)


# ------------------------------------------------------------------------------------- saving
def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    "component, param, value",
    [
        ("generator", "conv_out.weight", float("nan")),
        ("generator", "conv_in.bias", float("inf")),
        ("text_encoder", "text_projection.weight", float("-inf")),
    ],
)
def test_save_pretrained_refuses_nonfinite_and_leaves_nothing(tmp_path, component, param, value):
    pipe = make_tiny_pipeline()
    existing = tmp_path / "existing"
    pipe.save_pretrained(existing)
    before = _digest(existing)
    with torch.no_grad():
        getattr(pipe, component).get_parameter(param).view(-1)[0] = value
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match=rf"{component}\.{param} has 1 non-finite"):
        pipe.save_pretrained(fresh)
    assert not fresh.exists()
    with pytest.raises(ValueError, match="non-finite"):
        pipe.save_pretrained(existing)
    assert _digest(existing) == before


# ------------------------------------------------------------------------------------- publishing
class RecordingApi:
    calls: ClassVar[list[str]] = []

    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, **kw):
        RecordingApi.calls.append("create_repo")

    def upload_folder(self, **kw):
        RecordingApi.calls.append("upload_folder")


def _poison_file(path: Path, key: str, value: float) -> None:
    tensors = load_file(path)
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = value
    path.unlink()
    save_file(tensors, path)


@pytest.mark.parametrize(
    "rel, key",
    [
        ("generator/diffusion_pytorch_model.safetensors", "conv_out.weight"),
        ("text_encoder/model.safetensors", "text_model.final_layer_norm.bias"),
    ],
)
def test_push_refuses_a_folder_with_nonfinite_weights(tmp_path, monkeypatch, rel, key):
    monkeypatch.setattr(hub, "HfApi", RecordingApi)
    RecordingApi.calls = []
    folder = tmp_path / "pipe"
    make_tiny_pipeline().save_pretrained(folder)
    hub.push_folder_to_hub(folder, "me/tiny")
    assert RecordingApi.calls == ["create_repo", "upload_folder"]

    RecordingApi.calls = []
    _poison_file(folder / rel, key, float("nan"))
    with pytest.raises(
        ValueError, match=rf"{rel}: tensor '{key}' has 1 non-finite values; refusing to publish"
    ):
        hub.push_folder_to_hub(folder, "me/tiny")
    assert RecordingApi.calls == []  # not even the repository was created


def test_push_ignores_files_it_would_not_send(tmp_path, monkeypatch):
    """A non-finite file outside the allow-list (e.g. a discriminator or a checkpoint) is never sent,
    so it does not block publishing."""
    monkeypatch.setattr(hub, "HfApi", RecordingApi)
    RecordingApi.calls = []
    folder = tmp_path / "pipe"
    make_tiny_pipeline().save_pretrained(folder)
    (folder / "checkpoint-1").mkdir()
    save_file({"w": torch.tensor([float("nan")])}, folder / "checkpoint-1" / "model.safetensors")
    hub.push_folder_to_hub(folder, "me/tiny")
    assert RecordingApi.calls == ["create_repo", "upload_folder"]


def test_training_push_refuses_weights_corrupted_after_saving(fixtures, tmp_path, monkeypatch):
    """The Hub path of a training run checks the files themselves, not only the in-memory model: a
    weights file that holds NaN on disk at push time (saved wrong, or changed after saving) is refused."""
    monkeypatch.setattr(hub, "HfApi", RecordingApi)
    RecordingApi.calls = []
    original = ProductImagePipeline.save_pretrained

    def save_then_corrupt(self, save_directory, **kwargs):
        result = original(self, save_directory, **kwargs)
        weights = Path(save_directory) / "generator" / "diffusion_pytorch_model.safetensors"
        _poison_file(weights, "conv_in.bias", float("inf"))
        return result

    monkeypatch.setattr(ProductImagePipeline, "save_pretrained", save_then_corrupt)
    out = tmp_path / "corrupted"
    trainer = make_trainer(fixtures, out, max_train_steps=2, push_to_hub=True, hub_model_id="me/tiny")
    with pytest.raises(ValueError, match="conv_in.bias' has 1 non-finite values; refusing to publish"):
        trainer.train()
    assert RecordingApi.calls == []
