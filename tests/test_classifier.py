"""The attribute classifier: training script on a tiny dataset, save/load, inference, the shipped weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from prodimg.data import CATEGORY_NAMES, PATTERN_NAMES
from prodimg.evaluation.classifier import (
    CLASSIFIER_DIR,
    AttributeClassifier,
    augment,
    classifier_metrics,
    load_attribute_classifier,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_eval import make_labeled_dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "train_scripts"))


def test_train_script_saves_and_loads(tmp_path):
    import train_attribute_classifier as script

    data = make_labeled_dataset(tmp_path / "data", {"train": 24, "validation": 6, "test": 6, "test_unseen_pairs": 4})
    out = tmp_path / "cls"
    argv = ["--dataset_name", str(data), "--resolution", "16", "--max_train_steps", "3", "--train_batch_size", "8",
            "--block_out_channels", "8", "16", "--validation_steps", "2", "--output_dir", str(out)]
    assert script.main(argv) == 0
    assert (out / "config.json").is_file() and (out / "diffusion_pytorch_model.safetensors").is_file()
    metrics = classifier_metrics(out)
    assert set(metrics["test"]) == {"test", "test_unseen_pairs"}
    assert {"category_accuracy", "pattern_accuracy", "num_images"} <= set(metrics["test"]["test"])
    assert metrics["test"]["test_unseen_pairs"]["num_images"] == 4
    model = load_attribute_classifier(out)
    assert model.label_names("category") == CATEGORY_NAMES and model.label_names("pattern") == PATTERN_NAMES
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    pred = model.predict(images)
    assert set(pred) == {"category", "pattern"} and len(pred["category"]) == 5
    assert all(p in CATEGORY_NAMES for p in pred["category"])
    assert model.head_classifier("category")(images) == pred["category"]
    # Other sizes are resized to the classifier's sample size.
    assert len(model.predict(np.zeros((2, 32, 32, 3), np.uint8))["pattern"]) == 2
    with pytest.raises(ValueError, match="no 'color' head"):
        model.head_classifier("color")


def test_train_classifier_recolor_hook():
    from prodimg.evaluation.classifier import train_classifier

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    labels = {"category": [CATEGORY_NAMES[i % 10] for i in range(20)], "pattern": ["solid"] * 20}
    names = {"category": CATEGORY_NAMES, "pattern": PATTERN_NAMES}
    calls = []

    def recolor(rows, generator):
        calls.append(np.asarray(rows))
        return np.zeros((len(rows), 16, 16, 3), np.uint8)

    kwargs = dict(steps=3, batch_size=8, block_out_channels=(8, 16), log_every=1)
    train_classifier(images, labels, names, recolor=recolor, recolor_prob=1.0, **kwargs)
    # every row of every step
    assert len(calls) == 3 and all(len(rows) == 8 and rows.max() < 20 for rows in calls)
    calls.clear()
    train_classifier(images, labels, names, recolor=recolor, recolor_prob=0.0, **kwargs)
    assert not calls
    with pytest.raises(ValueError, match="needs a recolor function"):
        train_classifier(images, labels, names, recolor_prob=0.5, **kwargs)
    with pytest.raises(ValueError, match=r"recolor_prob must be in \[0, 1\]"):
        train_classifier(images, labels, names, recolor=recolor, recolor_prob=1.5, **kwargs)


def test_round_trip_and_batch_independence(tmp_path):
    torch.manual_seed(0)
    model = AttributeClassifier(sample_size=16, block_out_channels=(8, 16), category_names=tuple(CATEGORY_NAMES),
                                pattern_names=tuple(PATTERN_NAMES)).eval()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    model.save_pretrained(tmp_path / "m", safe_serialization=True)
    loaded = load_attribute_classifier(tmp_path / "m")
    with torch.no_grad():
        a, b = model(x).logits, loaded(x).logits
        single = loaded(x[:1]).logits
    for head in ("category", "pattern"):
        torch.testing.assert_close(a[head], b[head])
        torch.testing.assert_close(single[head], b[head][:1], rtol=1e-4, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="train_attribute_classifier"):
        load_attribute_classifier(tmp_path / "missing")


def test_augment_keeps_shape_range_and_white_fill():
    x = torch.ones(6, 3, 8, 8)  # white
    y = augment(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(y, x)  # white stays white under every augmentation
    x = torch.rand(6, 3, 8, 8) * 2 - 1
    y = augment(x, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1


def test_shipped_classifier():
    if not (CLASSIFIER_DIR / "config.json").is_file():
        pytest.skip("the attribute classifier has not been trained yet")
    files = [p for p in CLASSIFIER_DIR.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 2 * 1024 * 1024
    assert not any(p.suffix in (".bin", ".pt", ".pth", ".pkl") for p in files)
    model = load_attribute_classifier()
    assert model.label_names("category") == CATEGORY_NAMES
    metrics = json.loads((CLASSIFIER_DIR / "metrics.json").read_text())
    # Recolour-trained: held-out colour/category pairs are judged nearly as well as the test split.
    assert metrics["test"]["test"]["category_accuracy"] > 0.88
    assert metrics["test"]["test_unseen_pairs"]["category_accuracy"] > 0.85
    assert set(metrics["reliable_heads"]) == {"category", "pattern"}
