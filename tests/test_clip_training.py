"""train_scripts/train_clip.py and prodimg.clip_training with a tiny CLIP on CPU (offline).

One run goes through ``accelerate launch`` (a subprocess); the resume test calls the trainer in-process.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from prodimg.clip_training import contrastive_loss, in_batch_top1, retrieval_accuracy
from prodimg.clip_training import main as clip_main
from prodimg.testing import TINY_TEXT_DIM, free_port, run_in_gloo_processes, run_launch, tiny_generator
from prodimg.training.checkpointing import checkpoint_problem

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_eval import make_labeled_dataset

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "train_scripts" / "train_clip.py"


def tiny_args(data: Path, out: Path, steps: int = 3, **extra) -> list[str]:
    args = {
        "dataset_name": data, "resolution": 16, "patch_size": 4, "text_hidden_size": TINY_TEXT_DIM,
        "text_num_hidden_layers": 1, "text_num_attention_heads": 2, "vision_hidden_size": TINY_TEXT_DIM,
        "vision_num_hidden_layers": 1, "vision_num_attention_heads": 2, "projection_dim": TINY_TEXT_DIM,
        "train_batch_size": 4, "max_train_steps": steps, "checkpointing_steps": 2, "validation_steps": 2,
        "logging_steps": 1, "retrieval_batch_size": 5, "lr_warmup_steps": 0, "learning_rate": 1e-3,
        "report_to": "none", "output_dir": out, **extra,
    }
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_labeled_dataset(tmp_path_factory.mktemp("clipdata") / "data", {"train": 16, "validation": 10})


@pytest.fixture(scope="module")
def launched_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("clip") / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_DATASETS_CACHE=str(out.parent / "hf-datasets"))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           str(SCRIPT), *tiny_args(data, out)]
    proc = run_launch(cmd, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc.stderr


def test_launch_writes_text_encoder_tokenizer_clip_and_card(launched_run):
    out, log = launched_run
    for sub, files in {"text_encoder": ["config.json", "model.safetensors"], "tokenizer": ["tokenizer_config.json"],
                       "clip": ["config.json", "model.safetensors", "preprocessor_config.json"]}.items():
        for f in files:
            assert (out / sub / f).is_file(), f"{sub}/{f}"
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))
    config = json.loads((out / "text_encoder" / "config.json").read_text())
    assert config["architectures"] == ["CLIPTextModelWithProjection"]
    assert config["max_position_embeddings"] == 77 and config["projection_dim"] == TINY_TEXT_DIM
    retrieval = json.loads((out / "retrieval.json").read_text())
    for key in ("t2i_top1", "t2i_top5", "i2t_top1", "i2t_top5", "t2i_top1_labels"):
        assert 0.0 <= retrieval[key] <= 1.0
    assert retrieval["num_pairs"] == 10 and retrieval["group_size"] == 5 and retrieval["step"] == 3
    assert "validation retrieval" in log and "text->image top-1" in log
    card = (out / "README.md").read_text()
    assert "text -> image" in card and "image -> text" in card and "library_name: transformers" in card
    assert checkpoint_problem(out / "checkpoint-2") is None and checkpoint_problem(out / "checkpoint-3") is None


def test_text_encoder_drives_the_pipeline_and_the_gan_loader(launched_run):
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    from prodimg import ProductImagePipeline
    from prodimg.evaluation.clip import load_clip_judge
    from prodimg.schedulers import DDGANScheduler
    from prodimg.training.gan import load_text_encoder

    out, _ = launched_run
    # What train_product_gan.py does with --pretrained_model_name_or_path OUTPUT_DIR.
    tokenizer, text_encoder = load_text_encoder(str(out))
    assert isinstance(text_encoder, CLIPTextModelWithProjection)
    assert isinstance(tokenizer, CLIPTokenizer) and len(tokenizer) == 49408
    pipe = ProductImagePipeline(tokenizer=tokenizer, text_encoder=text_encoder, generator=tiny_generator(sample_size=16),
                                scheduler=DDGANScheduler(num_train_timesteps=4))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(["red striped dress", "blue bag"], generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()
    # The saved text tower is the CLIP's text tower: same projected embeddings.
    judge = load_clip_judge(str(out))
    assert judge.source.endswith("clip") and judge.image_size == 16
    ids = tokenizer(["red striped dress"], padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        a = text_encoder(**ids).text_embeds
        b = judge.model.get_text_features(**ids).pooler_output
    torch.testing.assert_close(a, b)
    # The judge scores images through the metrics registry.
    from prodimg.metrics import EvalContext, get_metric

    ctx = EvalContext(generated_images=(images * 255).astype(np.uint8), prompts=["red striped dress", "blue bag"],
                      clip_model=judge.model, clip_tokenizer=judge.tokenizer)
    score = get_metric("clip_score", image_mean=judge.image_mean, image_std=judge.image_std).compute(ctx)
    assert 0.0 <= score["clip_score"] <= 100.0


def test_resume_matches_an_uninterrupted_run(data, tmp_path, monkeypatch):
    import shutil

    from safetensors.torch import load_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    assert clip_main(tiny_args(data, tmp_path / "straight", steps=4, validation_steps=10)) == 0
    # An interrupted run: only its step-2 checkpoint survives; resuming must reach the same weights.
    shutil.copytree(tmp_path / "straight" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    assert clip_main(tiny_args(data, tmp_path / "resumed", steps=4, validation_steps=10,
                               resume_from_checkpoint="latest")) == 0
    a = load_file(tmp_path / "straight" / "clip" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "clip" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    summary = json.loads((tmp_path / "resumed" / "training_summary.json").read_text())
    assert summary["global_step"] == 4 and summary["images_seen"] == 16


def test_time_budget_stops_and_saves(data, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    out = tmp_path / "budget"
    assert clip_main(tiny_args(data, out, steps=1000, max_train_seconds=1e-9, train_time_clock="cpu")) == 0
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["global_step"] == 0 and (out / "text_encoder" / "config.json").is_file()


def test_bad_arguments_exit_2(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        clip_main(tiny_args(data, tmp_path / "x", patch_size=5))
    assert err.value.code == 2
    assert "not a multiple of --patch_size" in capsys.readouterr().err
    assert clip_main(tiny_args(data, tmp_path / "y", caption_column="caption")) == 2
    assert "column 'caption' not found" in capsys.readouterr().err


def test_retrieval_accuracy():
    rng = np.random.default_rng(0)
    emb = torch.tensor(rng.normal(size=(20, 8)), dtype=torch.float32)
    perfect = retrieval_accuracy(emb, emb.clone(), group_size=8)
    assert perfect["t2i_top1"] == perfect["i2t_top1"] == perfect["t2i_top5"] == 1.0
    assert perfect["num_pairs"] == 16  # groups of 8, 8 and 4: the last is too small for top-5
    # Shuffled texts: top-1 near chance; labels make equal-label items count as hits.
    shuffled = retrieval_accuracy(emb, emb[torch.randperm(20, generator=torch.Generator().manual_seed(0))], 8)
    assert shuffled["t2i_top1"] < 0.5
    labels = np.zeros((20, 3), np.int64)
    assert retrieval_accuracy(emb, -emb, 8, labels)["t2i_top1_labels"] == 1.0
    # Groups smaller than 5 are dropped (top-5 would be trivial).
    assert retrieval_accuracy(torch.cat([emb, emb[:1]]), torch.cat([emb, emb[:1]]), 8)["num_pairs"] == 21
    with pytest.raises(ValueError, match="at least 5"):
        retrieval_accuracy(emb[:3], emb[:3], 8)


# ------------------------------------------------------------------------------------- the loss
def _pairs(n: int = 8, dim: int = 6):
    g = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    image = torch.nn.functional.normalize(text + 0.8 * torch.randn(n, dim, generator=g), dim=-1)
    return text, image, torch.tensor(math.log(10.0))


def _one_process_loss(text, image, logit_scale):
    """transformers' CLIPModel loss on the whole batch, with its gradients."""
    from transformers.models.clip.modeling_clip import image_text_contrastive_loss

    leaves = [x.clone().requires_grad_() for x in (text, image, logit_scale)]
    loss = image_text_contrastive_loss(leaves[0] @ leaves[1].t() * leaves[2].exp())
    loss.backward()
    return loss.detach(), [x.grad for x in leaves]


def test_contrastive_loss_in_one_process_is_clips_own():
    text, image, scale = _pairs()
    want, want_grads = _one_process_loss(text, image, scale)
    leaves = [x.clone().requires_grad_() for x in (text, image, scale)]
    got = contrastive_loss(*leaves)
    got.backward()
    torch.testing.assert_close(got.detach(), want)
    for leaf, grad in zip(leaves, want_grads):
        torch.testing.assert_close(leaf.grad, grad)


def _contrastive_rank(rank: int, world: int) -> dict:
    text, image, scale = _pairs()
    per = len(text) // world
    leaves = [text[rank * per : (rank + 1) * per].clone().requires_grad_(),
              image[rank * per : (rank + 1) * per].clone().requires_grad_(), scale.clone().requires_grad_()]
    loss = contrastive_loss(*leaves)
    loss.backward()
    return {"loss": loss.detach(), "grads": [x.grad for x in leaves], "top1": in_batch_top1(*leaves[:2])}


def test_contrastive_loss_across_processes_uses_the_whole_batch(tmp_path):
    """Two gloo processes with half a batch each train like one process with all of it: the mean of their
    losses is the whole batch's loss, and so is the mean of their gradients (what DDP applies: each
    process's embeddings get the gradient of the sum of the processes' losses, hence the factor 2)."""
    world = 2
    ranks = run_in_gloo_processes(_contrastive_rank, world, tmp_path)
    text, image, scale = _pairs()
    want, (g_text, g_image, g_scale) = _one_process_loss(text, image, scale)
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / world, want)
    torch.testing.assert_close(torch.cat([r["grads"][0] for r in ranks]) / world, g_text)
    torch.testing.assert_close(torch.cat([r["grads"][1] for r in ranks]) / world, g_image)
    torch.testing.assert_close(sum(r["grads"][2] for r in ranks) / world, g_scale)
    # Each half alone (its own pairs as the only negatives) is a different, easier loss.
    per = len(text) // world
    local = sum(contrastive_loss(text[i * per : (i + 1) * per], image[i * per : (i + 1) * per], scale)
                for i in range(world)) / world
    assert local < want - 0.1
    # The logged in-batch top-1 is the global batch's too, the same on every process.
    whole_top1 = float(((text @ image.t()).argmax(dim=1) == torch.arange(len(text))).float().mean())
    halves_top1 = sum(in_batch_top1(text[i * per : (i + 1) * per], image[i * per : (i + 1) * per])
                      for i in range(world)) / world
    assert halves_top1 != whole_top1
    assert [r["top1"] for r in ranks] == [whole_top1] * world
