"""``prodimg eval`` and prodimg.evaluation, end to end on a tiny pipeline and a tiny dataset (CPU, offline).

Inception is replaced by a small deterministic feature extractor (``EvalContext`` accepts any
``feature_extractor``); the real network is exercised by the slow test at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prodimg.data import BASIC_COLORS, CATEGORY_NAMES, COLOR_NAMES, PATTERN_NAMES
from prodimg.evaluation.evaluate import ALL_METRICS, generate_for_captions, resolve_clip_model, run_eval
from prodimg.testing import make_tiny_pipeline, tiny_clip_model


# ---------------------------------------------------------------------------------------- shared fixtures
def make_labeled_dataset(path: Path, splits: dict[str, int], size: int = 16, seed: int = 0) -> Path:
    """A ``save_to_disk`` DatasetDict like the fashion catalog: a coloured block on white, captions
    from the labels, ``category``/``color``/``pattern`` ClassLabels with the catalog's names."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(seed)
    features = Features({"image": ImageFeature(), "text": Value("string"), "category": ClassLabel(names=CATEGORY_NAMES),
                         "color": ClassLabel(names=COLOR_NAMES), "pattern": ClassLabel(names=PATTERN_NAMES)})
    out = {}
    for split, n in splits.items():
        rows = {k: [] for k in features}
        for _ in range(n):
            cat, col, pat = (int(rng.integers(len(v))) for v in (CATEGORY_NAMES, COLOR_NAMES, PATTERN_NAMES))
            img = np.full((size, size, 3), 255, np.uint8)
            h = 3 + cat % 5
            img[size // 2 - h : size // 2 + h, 3 : size - 3] = BASIC_COLORS[COLOR_NAMES[col]]
            if pat:
                img[size // 2 - h : size // 2 + h : 2 + pat, 3 : size - 3] //= 2
            rows["image"].append(Image.fromarray(img))
            rows["text"].append(f"{COLOR_NAMES[col]} {PATTERN_NAMES[pat]} {CATEGORY_NAMES[cat]}")
            rows["category"].append(cat)
            rows["color"].append(col)
            rows["pattern"].append(pat)
        out[split] = Dataset.from_dict(rows, features=features)
    DatasetDict(out).save_to_disk(str(path))
    return path


class TinyFeatures:
    """Deterministic 12-d features (channel means and a 2x2 grey thumbnail) instead of Inception."""

    def __init__(self, *args, **kwargs):
        self.calls = 0

    def __call__(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        self.calls += 1
        x = images.astype(np.float32) / 255.0
        n, h, w, _ = x.shape
        grey = x.mean(-1).reshape(n, 2, h // 2, 2, w // 2).mean((2, 4)).reshape(n, 4)
        return np.concatenate([x.mean((1, 2)), x.std((1, 2)), grey, x.min((1, 2))[:, :2]], axis=1)


@pytest.fixture(scope="module")
def eval_fixtures(tmp_path_factory):
    from prodimg.evaluation.clip import save_clip_judge
    from prodimg.text import load_clip_tokenizer

    root = tmp_path_factory.mktemp("eval")
    make_labeled_dataset(root / "data", {"test": 10, "test_unseen_pairs": 6})
    pipe = make_tiny_pipeline(sample_size=16)
    pipe.save_pretrained(root / "pipe")
    save_clip_judge(root / "pipe" / "clip", tiny_clip_model(), load_clip_tokenizer(), [0.5] * 3, [0.25] * 3)
    pipe.save_pretrained(root / "pipe_no_clip")
    return root


@pytest.fixture
def fake_inception(monkeypatch, tmp_path):
    from prodimg.metrics import inception
    from prodimg.training import validation

    monkeypatch.setattr(inception, "InceptionFeatureExtractor", TinyFeatures)
    monkeypatch.setattr(validation, "fid_unavailable_reason", lambda: None)
    monkeypatch.setenv("PRODIMG_METRICS_CACHE", str(tmp_path / "metrics-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "metrics-cache"


# ---------------------------------------------------------------------------------------- tests
def test_eval_command_end_to_end(eval_fixtures, fake_inception, tmp_path, capsys):
    from prodimg.cli import main

    out = tmp_path / "report"
    argv = ["eval", "--pipeline", str(eval_fixtures / "pipe"), "--dataset", str(eval_fixtures / "data"),
            "--split", "test,test_unseen_pairs", "--num_images", "8", "--batch_size", "3", "--output_dir", str(out),
            "--seed", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "generating [test]: 8/8 images" in printed and "sampling speed" in printed
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    for split, n in (("test", 8), ("test_unseen_pairs", 6)):
        assert report["splits"][split] == n
        for key in ("fid", "kid", "kid_std", "precision", "recall", "clip_score", "color_accuracy",
                    "category_accuracy"):
            assert f"{key}/{split}" in m, key
    for key in ("clip_score", "color_accuracy", "category_accuracy"):
        assert key in m  # over both splits
    # Diversity: 8 seeds for each of the first split's prompts with distinct labels, against real images.
    div = report["diversity"]
    assert div["split"] == "test" and div["seeds_per_prompt"] == 8 and div["real_grouped_by"] == ["category", "color", "pattern"]
    assert m["diversity_groups"] == len(div["prompts"]) >= 2
    assert 0 < m["diversity"] < 1 and 0 <= m["diversity_min_pair"] <= m["diversity"]
    assert all(isinstance(v, float) and np.isfinite(v) for v in m.values())
    assert 0 <= m["color_accuracy"] <= 1 and m["fid/test"] >= 0
    assert report["sampling"]["images_per_second"] > 0 and report["sampling"]["batch_size"] == 3
    assert report["sampling"]["num_inference_steps"] == 4
    assert report["clip_model"].endswith("clip")  # the pipeline's own clip/ was found
    cls = report["classifier"]
    assert set(cls["test"]) == {"test", "test_unseen_pairs"} and isinstance(cls["reliable_heads"], list)
    if "pattern" in cls["reliable_heads"]:
        assert "pattern_accuracy/test" in m
    else:
        assert "pattern_accuracy" in report["skipped"]
    # Per class: the judge's confusion matrix for the generated images, beside its accuracy on the real ones.
    for split, n in (("test", 8), ("test_unseen_pairs", 6)):
        info = report["per_class"]["category"][split]
        confusion = np.asarray(info["generated"]["confusion"])
        assert confusion.sum() == n
        assert np.trace(confusion) / n == pytest.approx(m[f"category_accuracy/{split}"])
        assert set(info["real_accuracy"]) == set(info["generated"]["labels"]) == set(CATEGORY_NAMES)
        assert 0 <= m[f"category_accuracy_real/{split}"] <= 1
        # ... and within each requested colour / pattern: the groups add up to the split's accuracies.
        assert set(info["by"]) == {"color", "pattern"}
        for groups in info["by"].values():
            assert sum(g["n"] for g in groups.values()) == n
            for who, key in (("generated", "category_accuracy"), ("real", "category_accuracy_real")):
                right = sum(g[who] * g["n"] for g in groups.values())
                assert right / n == pytest.approx(m[f"{key}/{split}"])
    assert "category [test] weakest classes:" in printed
    assert "category [test_unseen_pairs] weakest by color:" in printed
    grid = Image.open(out / "grid.png")
    assert grid.size == (8 * 32, 2 * 1 * 32)  # 8 of 8 test images: one real row + one generated row, 2x upscaled
    assert len(report["grid"]["prompts"]) == 8
    # Real features were cached per dataset/split/resolution/count; a second run reads them.
    assert len(list(fake_inception.glob("*test__res16__n8*.npz"))) == 1
    assert len(list(fake_inception.glob("*test_unseen_pairs__res16__n6*.npz"))) == 1
    assert main(argv) == 0
    assert "real (cached" in capsys.readouterr().out
    again = json.loads((out / "report.json").read_text())["metrics"]
    assert again == pytest.approx(m)  # deterministic seeds


def test_eval_skips_what_does_not_apply(eval_fixtures, fake_inception, tmp_path):
    report = run_eval(str(eval_fixtures / "pipe_no_clip"), str(eval_fixtures / "data"), "test_unseen_pairs",
                      num_images=5, batch_size=5, metrics=["clip_score", "color_accuracy"], output_dir=None)
    assert set(report["metrics"]) == {"color_accuracy", "color_accuracy/test_unseen_pairs"}
    assert "--clip_model" in report["skipped"]["clip_score"]
    assert "grid" not in report
    with pytest.raises(ValueError, match="unknown metric"):
        run_eval(str(eval_fixtures / "pipe"), str(eval_fixtures / "data"), metrics=["nope"], output_dir=None)


def test_eval_compile_warms_up_every_timed_batch_shape(eval_fixtures, fake_inception, eager_compile,
                                                       monkeypatch):
    from prodimg.pipeline import ProductImagePipeline

    sizes = []
    original_call = ProductImagePipeline.__call__

    def call(self, prompt=None, *args, **kwargs):
        sizes.append(len(prompt) if isinstance(prompt, list) else 1)
        return original_call(self, prompt, *args, **kwargs)

    monkeypatch.setattr(ProductImagePipeline, "__call__", call)
    report = run_eval(str(eval_fixtures / "pipe"), str(eval_fixtures / "data"), "test", num_images=6,
                      batch_size=4, metrics=["color_accuracy"], output_dir=None, compile=True)
    assert eager_compile == ["ProductGenerator"]
    # untimed warm-up of both batch sizes the 6 rows take, each with the shortest and the longest captions,
    # then the timed batches
    assert sizes == [2, 2, 4, 4, 4, 2]
    assert report["compile"] is True and report["compile_warmup_seconds"] > 0
    plain = run_eval(str(eval_fixtures / "pipe"), str(eval_fixtures / "data"), "test", num_images=6,
                     batch_size=4, metrics=["color_accuracy"], output_dir=None)
    assert plain["compile"] is False and "compile_warmup_seconds" not in plain
    assert plain["metrics"] == pytest.approx(report["metrics"])


def test_eval_judges_each_image_once_per_head(eval_fixtures, fake_inception, monkeypatch):
    """The headline accuracy and the per-class breakdown share the judge's answers: each generated and each
    real image goes through a head once."""
    from prodimg.evaluation.classifier import AttributeClassifier

    rows = []
    original = AttributeClassifier.predict

    def spy(self, images):
        rows.append(len(images))
        return original(self, images)

    monkeypatch.setattr(AttributeClassifier, "predict", spy)
    report = run_eval(str(eval_fixtures / "pipe"), str(eval_fixtures / "data"), "test,test_unseen_pairs",
                      num_images=8, batch_size=4, metrics=["category_accuracy"], output_dir=None)
    assert sum(rows) == 2 * (8 + 6)  # generated + real, both splits, one head
    assert report["metrics"]["category_accuracy"] == pytest.approx((
        np.trace(report["per_class"]["category"]["test"]["generated"]["confusion"])
        + np.trace(report["per_class"]["category"]["test_unseen_pairs"]["generated"]["confusion"])) / 14)


def test_explicit_clip_model_and_none(eval_fixtures):
    pipe = str(eval_fixtures / "pipe")
    assert resolve_clip_model("none", pipe)[0] is None
    assert resolve_clip_model("openai/clip-vit-base-patch32", pipe) == ("openai/clip-vit-base-patch32", None)
    assert resolve_clip_model(None, pipe)[0] == str(eval_fixtures / "pipe" / "clip")


def test_generation_is_per_row_deterministic():
    pipe = make_tiny_pipeline(sample_size=16)
    pipe.set_progress_bar_config(disable=True)
    captions = ["red dress", "blue bag", "green sneaker", "black coat", "white shirt"]
    a, _ = generate_for_captions(pipe, captions, batch_size=2, seed=7)
    b, _ = generate_for_captions(pipe, captions, batch_size=5, seed=7)
    c, _ = generate_for_captions(pipe, captions[3:], batch_size=1, seed=10)
    assert a.dtype == np.uint8 and a.shape == (5, 16, 16, 3)
    # Same images whatever the batching, up to float rounding at a uint8 step: on one thread, CPU kernels
    # for batch 2 and batch 5 differ in the last bit and flip about 0.03 % of the pixels by 1.
    for x, y in ((a, b), (a[3:], c)):
        diff = np.abs(x.astype(int) - y)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_all_metrics_are_registered_or_derived():
    from prodimg.metrics import list_metrics

    derived = {"pattern_accuracy"}  # category_accuracy's metric on the pattern head
    assert set(ALL_METRICS) - derived <= set(list_metrics())


@pytest.mark.slow
def test_eval_with_real_inception(eval_fixtures, tmp_path, monkeypatch):
    from prodimg.training.validation import fid_unavailable_reason

    if fid_unavailable_reason() is not None:
        pytest.skip(fid_unavailable_reason())
    monkeypatch.setenv("PRODIMG_METRICS_CACHE", str(tmp_path / "cache"))
    report = run_eval(str(eval_fixtures / "pipe"), str(eval_fixtures / "data"), "test", num_images=6, batch_size=6,
                      metrics=["fid", "kid", "precision_recall"], output_dir=str(tmp_path / "out"))
    assert {"fid/test", "kid/test", "precision/test", "recall/test"} <= set(report["metrics"])
