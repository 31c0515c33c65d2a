"""Fast CPU tests of prodimg.metrics (no network, no downloads)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prodimg.metrics import (
    _REGISTRY,
    EvalContext,
    Metric,
    RealStatsKey,
    get_metric,
    list_metrics,
    register_metric,
)
from prodimg.metrics.context import load_real_stats
from prodimg.metrics.fid import fid_from_features, frechet_distance, kernel_inception_distance
from prodimg.metrics.precision_recall import precision_recall


def random_spd(rng, d, scale=1.0):
    a = rng.normal(size=(d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


# ---- registry -----------------------------------------------------------------------------------


def test_registry_lists_all_metrics():
    assert {"fid", "kid", "precision_recall", "clip_score", "color_accuracy", "category_accuracy", "diversity"} <= set(
        list_metrics()
    )
    assert list_metrics() == sorted(list_metrics())
    metric = get_metric("kid", num_subsets=7)
    assert metric.name == "kid" and metric.num_subsets == 7


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown metric 'nope'.*fid"):
        get_metric("nope")
    with pytest.raises(ValueError, match="already registered"):

        @register_metric("fid")
        class Other(Metric):
            def compute(self, ctx):
                return {}

    with pytest.raises(TypeError, match="subclass of Metric"):
        register_metric("thing")(object)


def test_register_custom_metric():
    try:

        @register_metric("_num_images")
        class NumImages(Metric):
            def compute(self, ctx):
                return {"num_images": float(ctx.num_generated)}

        ctx = EvalContext(generated_images=np.zeros((3, 4, 4, 3), np.uint8))
        assert get_metric("_num_images").compute(ctx) == {"num_images": 3.0}
    finally:
        _REGISTRY.pop("_num_images", None)


def test_context_validates_inputs():
    with pytest.raises(TypeError, match="generated_images.*uint8"):
        EvalContext(generated_images=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"generated_images.*\(N, H, W, 3\)"):
        EvalContext(generated_images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="prompts.*3 entries.*2 generated"):
        EvalContext(generated_images=np.zeros((2, 4, 4, 3), np.uint8), prompts=["a", "b", "c"])
    with pytest.raises(ValueError, match="attributes\\['color'\\]"):
        EvalContext(generated_images=np.zeros((2, 4, 4, 3), np.uint8), attributes={"color": ["red"]})
    with pytest.raises(ValueError, match="clip_score.*clip_model"):
        get_metric("clip_score").compute(EvalContext(generated_images=np.zeros((1, 4, 4, 3), np.uint8)))


# ---- FID ---------------------------------------------------------------------------------------


def test_fid_closed_form_diagonal():
    rng = np.random.default_rng(0)
    d = 16
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    # Same eigenbasis, rotated: still commuting, same closed form.
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)


def test_fid_closed_form_non_commuting_2d():
    # For 2x2 M with eigenvalues l1, l2 >= 0: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)).
    s1 = np.array([[2.0, 0.3], [0.3, 0.5]])
    s2 = np.array([[1.0, -0.7], [-0.7, 1.5]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    mu1, mu2 = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    expected = 8.0 + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-12)


def test_fid_matches_scipy_sqrtm_including_singular():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    d = 64
    for s1, s2 in [
        (random_spd(rng, d), random_spd(rng, d, 3.0)),
        # Rank-deficient covariances: fewer samples (20) than dimensions (64).
        (
            np.cov(rng.normal(size=(20, d)), rowvar=False),
            np.cov(rng.normal(1, 2, size=(20, d)), rowvar=False),
        ),
    ]:
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        covmean = scipy_linalg.sqrtm(s1 @ s2)
        reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(covmean))
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-6, abs=1e-6)


def test_fid_self_zero_and_noise_large():
    rng = np.random.default_rng(2)
    feats = rng.gamma(2.0, 0.2, size=(500, 64))  # non-negative, like Inception pool features
    assert abs(fid_from_features(feats, feats)) < 1e-6
    noise = rng.normal(0, 1, size=(500, 64))
    assert fid_from_features(feats, noise) > 10.0


def test_fid_rejects_bad_statistics():
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan, 0]), np.eye(2), np.zeros(2), np.eye(2))


# ---- KID ---------------------------------------------------------------------------------------


def test_kid_same_distribution_near_zero_and_shifted_positive():
    rng = np.random.default_rng(3)
    d = 64
    a = rng.gamma(2.0, 0.2, size=(600, d))
    b = rng.gamma(2.0, 0.2, size=(600, d))
    shifted = rng.gamma(2.0, 0.2, size=(600, d)) + 0.3
    same, same_std = kernel_inception_distance(a, b, num_subsets=20, subset_size=200, seed=0)
    diff, _ = kernel_inception_distance(a, shifted, num_subsets=20, subset_size=200, seed=0)
    assert abs(same) < 3 * same_std + 1e-3
    assert diff > 0.1 and diff > 50 * abs(same)
    # Seeded: the same call gives the same numbers.
    assert kernel_inception_distance(
        a, b, num_subsets=5, subset_size=100, seed=1
    ) == kernel_inception_distance(a, b, num_subsets=5, subset_size=100, seed=1)


def test_kid_unbiased_formula_small_case():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))

    def k(u, v):
        return (u @ v / 3 + 1) ** 3

    m = 5
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    # One subset of the full size is a permutation of the full sets: the statistic is exact.
    kid, std = kernel_inception_distance(x, y, num_subsets=1, subset_size=m)
    assert kid == pytest.approx(xx + yy - 2 * xy, rel=1e-5) and std == 0.0


# ---- precision / recall ------------------------------------------------------------------------


def test_precision_recall_identical_disjoint_and_collapsed():
    rng = np.random.default_rng(5)
    d = 32
    real = rng.normal(size=(400, d)).astype(np.float32)
    assert precision_recall(real, real.copy()) == (1.0, 1.0)

    far = rng.normal(size=(400, d)).astype(np.float32) + 100.0
    assert precision_recall(real, far) == (0.0, 0.0)

    # Mode collapse: every generated sample sits near one real sample.
    collapsed = real[0] + 0.01 * rng.normal(size=(400, d)).astype(np.float32)
    precision, recall = precision_recall(real, collapsed)
    assert precision > 0.95 and recall < 0.05

    # Fresh samples of the same distribution: both high, and block size does not matter.
    other = rng.normal(size=(400, d)).astype(np.float32)
    p, r = precision_recall(real, other)
    assert p > 0.5 and r > 0.5
    assert precision_recall(real, other, block_size=64) == (p, r)


# ---- metrics through the EvalContext, real-feature disk cache ----------------------------------


class FakeExtractor:
    """Stands in for InceptionFeatureExtractor: features are downsampled pixels plus a fixed projection."""

    def __init__(self):
        self.calls = 0
        self.proj = np.random.default_rng(0).normal(size=(48, 16)).astype(np.float32)

    def __call__(self, images):
        self.calls += 1
        x = (
            images.astype(np.float32)
            .reshape(len(images), 4, 2, 4, 2, 3)
            .mean(axis=(2, 4))
            .reshape(len(images), -1)
        )
        return np.tanh(x / 255.0 @ self.proj)


def test_metrics_share_features_and_cache_real_stats(tmp_path):
    rng = np.random.default_rng(6)
    real = rng.integers(0, 256, size=(64, 8, 8, 3), dtype=np.uint8)
    fake = rng.integers(0, 128, size=(48, 8, 8, 3), dtype=np.uint8)
    key = RealStatsKey(dataset="fashion/catalog", split="test", resolution=8, num_images=64)
    extractor = FakeExtractor()
    ctx = EvalContext(
        generated_images=fake,
        real_images=real,
        real_stats_key=key,
        cache_dir=tmp_path,
        feature_extractor=extractor,
    )
    results = {}
    for name in ["fid", "kid", "precision_recall"]:
        kwargs = {"num_subsets": 10, "subset_size": 32} if name == "kid" else {}
        results.update(get_metric(name, **kwargs).compute(ctx))
    assert set(results) == {"fid", "kid", "kid_std", "precision", "recall"}
    assert json.loads(json.dumps(results)) == results
    assert all(isinstance(v, float) for v in results.values())
    assert extractor.calls == 2  # once for the generated, once for the real images
    path = ctx.real_cache_path()
    assert path.parent == tmp_path and path.name.startswith("fashion_catalog__test__res8__n64__inception")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    # A second run reads the real features from disk: no real images needed.
    ctx2 = EvalContext(
        generated_images=fake, real_stats_key=key, cache_dir=tmp_path, feature_extractor=FakeExtractor()
    )
    assert get_metric("fid").compute(ctx2)["fid"] == pytest.approx(results["fid"], rel=1e-9)
    assert ctx2.feature_extractor.calls == 1

    # Wrong key contents are refused, not silently recomputed.
    stale = {"dataset": "x", "split": "test", "resolution": 8, "num_images": 64, "feature_id": "?"}
    with pytest.raises(ValueError, match="was written for"):
        load_real_stats(path, stale)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="unreadable"):
        get_metric("fid").compute(
            EvalContext(
                generated_images=fake,
                real_stats_key=key,
                cache_dir=tmp_path,
                feature_extractor=FakeExtractor(),
            )
        )


def test_real_stats_key_must_match_images(tmp_path):
    real = np.zeros((10, 8, 8, 3), np.uint8)
    key = RealStatsKey(dataset="d", split="train", resolution=8, num_images=20)
    ctx = EvalContext(
        real_images=real, real_stats_key=key, cache_dir=tmp_path, feature_extractor=FakeExtractor()
    )
    with pytest.raises(ValueError, match="20 images of 8x8"):
        ctx.inception_features("real")
    with pytest.raises(ValueError, match="generated_images"):
        EvalContext(feature_extractor=FakeExtractor()).inception_features("generated")


# ---- attributes --------------------------------------------------------------------------------


def test_color_and_category_accuracy_per_subset():
    images = np.zeros((6, 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(6)  # image i is identified by its first pixel
    measured = ["red", "blue", "red", "green", "black", "white"]
    ctx = EvalContext(
        generated_images=images,
        attributes={
            "color": ["red", "blue", 6, "green", "white", "white"],  # 6 == "green": ClassLabel id
            "category": ["shirt", "bag", "bag", "shirt", "dress", "dress"],
            "subset": ["seen", "seen", "seen", "heldout", "heldout", "heldout"],
        },
        category_classifier=lambda batch: ["shirt" if img[0, 0, 0] % 2 == 0 else "bag" for img in batch],
        batch_size=4,
    )
    colors = get_metric("color_accuracy", measure_fn=lambda img: measured[img[0, 0, 0]]).compute(ctx)
    assert colors == {
        "color_accuracy": pytest.approx(4 / 6),
        "color_accuracy/heldout": pytest.approx(2 / 3),
        "color_accuracy/seen": pytest.approx(2 / 3),
    }
    cats = get_metric("category_accuracy").compute(ctx)
    # predictions: shirt bag shirt bag shirt bag
    assert cats == {
        "category_accuracy": pytest.approx(2 / 6),
        "category_accuracy/heldout": pytest.approx(0.0),
        "category_accuracy/seen": pytest.approx(2 / 3),
    }
    assert json.loads(json.dumps({**colors, **cats})) == {**colors, **cats}


def test_attribute_errors():
    ctx = EvalContext(
        generated_images=np.zeros((2, 4, 4, 3), np.uint8), attributes={"color": ["red", "teal"]}
    )
    with pytest.raises(ValueError, match="'teal' is not one of"):
        get_metric("color_accuracy", measure_fn=lambda img: "red").compute(ctx)
    with pytest.raises(ValueError, match="attribute column 'category'"):
        get_metric("category_accuracy").compute(
            EvalContext(generated_images=ctx.generated_images, category_classifier=len)
        )
    bad = EvalContext(
        generated_images=ctx.generated_images,
        attributes={"category": [0, 1]},
        category_classifier=lambda b: [0],
    )
    with pytest.raises(ValueError, match="returned 1 labels for 2 images"):
        get_metric("category_accuracy").compute(bad)


def test_accuracy_by_group():
    from prodimg.metrics.attributes import accuracy_by_group

    requested = ["coat", "coat", "bag", "coat", "bag"]
    colours = ["white", "white", "white", "red", np.int64(3)]
    out = accuracy_by_group(requested, colours, {"generated": ["bag", "coat", "bag", "coat", "coat"],
                                                 "real": requested})
    assert out == {"3": {"n": 1, "generated": 0.0, "real": 1.0},
                   "red": {"n": 1, "generated": 1.0, "real": 1.0},
                   "white": {"n": 3, "generated": pytest.approx(2 / 3), "real": 1.0}}
    assert json.loads(json.dumps(out)) == out
    with pytest.raises(ValueError, match="1 generated predictions for 2 requested"):
        accuracy_by_group(["a", "b"], ["x", "y"], {"generated": ["a"]})
    with pytest.raises(ValueError, match="1 group values for 2 requested"):
        accuracy_by_group(["a", "b"], ["x"], {"generated": ["a", "b"]})


def test_per_class_accuracy_confusion():
    from prodimg.metrics.attributes import per_class_accuracy, predict_labels

    requested = ["bag", "bag", "bag", "shirt", "shirt", "dress"]
    predicted = ["bag", "shirt", "shirt", "shirt", "dress", "bag"]
    out = per_class_accuracy(predicted, requested, ["shirt", "bag", "dress", "coat"])
    assert out["labels"] == ["shirt", "bag", "dress", "coat"]
    assert out["confusion"] == [[1, 0, 1, 0], [2, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]  # rows: requested
    assert out["accuracy"] == {"shirt": 0.5, "bag": pytest.approx(1 / 3), "dress": 0.0, "coat": None}
    assert out["most_confused_with"] == {"shirt": ["dress", 0.5], "bag": ["shirt", pytest.approx(2 / 3)],
                                         "dress": ["bag", 1.0]}
    assert json.loads(json.dumps(out)) == out
    assert per_class_accuracy(["bag"], ["bag"], ["bag", "shirt"])["most_confused_with"] == {}
    with pytest.raises(ValueError, match=r"\['hat'\] are not among the classes"):
        per_class_accuracy(["hat"], ["bag"], ["bag"])
    with pytest.raises(ValueError, match="2 predictions for 1 requested"):
        per_class_accuracy(["bag", "bag"], ["bag"], ["bag"])
    # numpy scalars from a classifier compare as the Python values they hold
    assert predict_labels(lambda b: list(np.arange(len(b))), np.zeros((5, 2, 2, 3), np.uint8), 2) == [0, 1, 0, 1, 0]


def test_color_accuracy_uses_measure_color_by_default():
    pytest.importorskip("prodimg.data.color_measure")
    from prodimg.data.colors import BASIC_COLORS

    names = ["red", "blue", "yellow"]
    images = np.full((3, 32, 32, 3), 255, np.uint8)
    for image, name in zip(images, names):
        image[8:24, 10:22] = BASIC_COLORS[name]  # a flat garment on a white backdrop
    ctx = EvalContext(generated_images=images, attributes={"color": ["red", "blue", "green"]})
    assert get_metric("color_accuracy").compute(ctx) == {"color_accuracy": pytest.approx(2 / 3)}


# ---- diversity ----------------------------------------------------------------------------------


def test_diversity_collapsed_vs_varied_and_real_reference():
    rng = np.random.default_rng(0)
    varied = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    collapsed = np.repeat(varied[:1], 3, axis=0)
    images = np.concatenate([collapsed, varied[3:]])  # prompt 0: one image three times; prompt 1: three different
    groups = [0, 0, 0, 1, 1, 1]
    real = np.concatenate([varied[:3], varied[:3]])
    out = get_metric("diversity").compute(EvalContext(
        generated_images=images, attributes={"group": groups}, real_images=real,
        real_attributes={"group": ["a"] * 3 + ["b", "c", "d"]},  # only "a" has two or more real images
    ))
    # Uniform random bytes differ by about 1/3 of the range on average; identical images by 0.
    pair = np.abs(varied[3:].astype(float)[:, None] - varied[3:].astype(float)[None]).mean(axis=(2, 3, 4)) / 255
    assert out["diversity"] == pytest.approx((0 + pair[np.triu_indices(3, 1)].mean()) / 2)
    assert out["diversity_min_pair"] == 0.0 and out["diversity_groups"] == 2
    assert out["diversity_real_groups"] == 1 and 0.25 < out["diversity_real"] < 0.45
    assert out["diversity_ratio"] == pytest.approx(out["diversity"] / out["diversity_real"])
    # max_per_group caps the images used per group
    capped = get_metric("diversity", max_per_group=2).compute(EvalContext(generated_images=images, attributes={"group": groups}))
    assert capped["diversity_min_pair"] == 0.0 and "diversity_real" not in capped


def test_diversity_errors():
    images = np.zeros((3, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match=r"attributes\['group'\]"):
        get_metric("diversity").compute(EvalContext(generated_images=images))
    with pytest.raises(ValueError, match="at least one group with two or more"):
        get_metric("diversity").compute(EvalContext(generated_images=images, attributes={"group": [0, 1, 2]}))
    with pytest.raises(ValueError, match="max_per_group"):
        get_metric("diversity", max_per_group=1)
    with pytest.raises(ValueError, match=r"real_attributes\['group'\]. has 2 entries but there are 3 real images"):
        EvalContext(generated_images=images, real_images=images, real_attributes={"group": [0, 1]})
    with pytest.raises(ValueError, match="needs `real_images`"):
        EvalContext(generated_images=images, real_attributes={"group": [0, 1, 2]})
