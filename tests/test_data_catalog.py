"""The fashion catalog builder: splits, held-out pairs, determinism, captions, rendering, card, CLI.

Tests that read Fashion-MNIST skip only where Debian's dataset-fashion-mnist is not installed
(``apt-get install -y dataset-fashion-mnist``); CI installs it, so they run there.
"""

import filecmp
import json

import numpy as np
import pytest
from PIL import Image

from prodimg.data import captions as C
from prodimg.data import render
from prodimg.data.catalog import (
    HELD_OUT_PAIRS,
    SPLITS,
    CatalogRecolorer,
    allowed_colors,
    build_fashion_catalog,
    export_parquet,
    push_catalog_to_hub,
    sample_item_params,
)
from prodimg.data.color_measure import garment_mask, measure_color
from prodimg.data.colors import COLOR_NAMES
from prodimg.data.fashion_mnist import is_available

needs_fmnist = pytest.mark.skipif(
    not is_available(),
    reason="Fashion-MNIST IDX files absent: run `apt-get install -y dataset-fashion-mnist`",
)
LIMIT = 50  # per split -> 200 items


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not is_available():
        pytest.skip("Fashion-MNIST IDX files absent: run `apt-get install -y dataset-fashion-mnist`")
    out = tmp_path_factory.mktemp("catalog") / "fashion-catalog-32"
    ds = build_fashion_catalog(out, resolution=32, seed=0, limit=LIMIT)
    return out, ds


def _pairs(split):
    return {(COLOR_NAMES[c], C.CATEGORY_NAMES[k]) for c, k in zip(split["color"], split["category"])}


@needs_fmnist
def test_splits_and_columns(built):
    _, ds = built
    assert list(ds) == list(SPLITS)
    assert sum(len(s) for s in ds.values()) == 4 * LIMIT == 200
    for split in ds.values():
        assert split.column_names == ["image", "text", "category", "color", "pattern"]
        assert split.features["category"].names == C.CATEGORY_NAMES
        assert split.features["color"].names == COLOR_NAMES
        assert split.features["pattern"].names == render.PATTERN_NAMES
        assert type(split.features["image"]).__name__ == "Image"


@needs_fmnist
def test_held_out_pairs_absent_from_train_and_form_unseen_split(built):
    _, ds = built
    held = set(HELD_OUT_PAIRS)
    for name in ("train", "validation", "test"):
        assert not (_pairs(ds[name]) & held), name
    unseen = _pairs(ds["test_unseen_pairs"])
    assert unseen == held  # every held-out pair, nothing else (interleaved, so a limit keeps all)
    # every colour and every category is still seen in training
    assert {c for c, _ in _pairs(ds["train"])} | {c for c, _ in HELD_OUT_PAIRS} == set(COLOR_NAMES)


def test_held_out_pairs_design():
    colors = [c for c, _ in HELD_OUT_PAIRS]
    cats = [k for _, k in HELD_OUT_PAIRS]
    assert len(set(colors)) == len(colors) and len(set(cats)) == len(cats) == len(C.CATEGORY_NAMES)
    assert set(colors) <= set(COLOR_NAMES)
    for color, cat in HELD_OUT_PAIRS:
        assert COLOR_NAMES.index(color) not in allowed_colors(cat)
    # sampling never produces a held-out pair
    rng = np.random.default_rng(0)
    params = sample_item_params(rng, np.repeat(np.arange(10), 300))
    got = {(COLOR_NAMES[c], C.CATEGORY_NAMES[k]) for c, k in zip(params.color, params.category)}
    assert not got & set(HELD_OUT_PAIRS)
    assert len(got) == 110 - len(HELD_OUT_PAIRS)


@needs_fmnist
def test_deterministic_byte_identical(built, tmp_path):
    out, _ = built
    again = tmp_path / "again"
    build_fashion_catalog(again, resolution=32, seed=0, limit=LIMIT)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert any(str(f).endswith(".arrow") for f in files)
    for f in files:
        assert filecmp.cmp(out / f, again / f, shallow=False), f
    other = build_fashion_catalog(tmp_path / "seed1", resolution=32, seed=1, limit=5)
    assert other["train"]["text"] != build_fashion_catalog(tmp_path / "s0", seed=0, limit=5)["train"]["text"]


@needs_fmnist
def test_items_do_not_depend_on_limit(built, tmp_path):
    _, ds = built
    small = build_fashion_catalog(tmp_path / "small", resolution=32, seed=0, limit=7, contact_sheet=False)
    for name in SPLITS:
        a = small[name].cast_column("image", type(small[name].features["image"])(decode=False))
        b = ds[name].select(range(7)).cast_column("image", type(ds[name].features["image"])(decode=False))
        assert a.to_dict() == b.to_dict(), name


@needs_fmnist
def test_caption_variety_in_build(built):
    _, ds = built
    texts = [t for split in ds.values() for t in split["text"]]
    assert len(set(texts)) >= 0.95 * len(texts)
    for split in ds.values():
        for text, k, c, p in zip(split["text"], split["category"], split["color"], split["pattern"]):
            names = [n for n, _ in C.CATEGORY_SYNONYMS[C.CATEGORY_NAMES[k]]]
            assert any(n in text for n in names), text
            assert any(w in text for w in C.COLOR_SYNONYMS.get(COLOR_NAMES[c], [COLOR_NAMES[c]])), text
    train = ds["train"]
    for k in set(train["category"]):
        used = {
            n
            for t, kk in zip(train["text"], train["category"])
            if kk == k
            for n, _ in C.CATEGORY_SYNONYMS[C.CATEGORY_NAMES[k]]
            if n in t
        }
        assert len(used) >= 1


def _u(**fixed):
    u = [0.5] * C.N_CAPTION_UNIFORMS
    for i, v in fixed.items():
        u[int(i[1:])] = v
    return u


def test_no_template_is_the_only_way_a_category_is_named():
    """Every template takes every synonym of every category; each category has >= 3 names."""
    n_np, n_wrap = len(C.NOUN_PHRASES), len(C.WRAPPERS)
    for cat in C.CATEGORY_NAMES:
        synonyms = C.CATEGORY_SYNONYMS[cat]
        assert len(synonyms) >= 3
        for pattern in render.PATTERN_NAMES:
            for t in range(n_np):
                for w in range(n_wrap):
                    seen = set()
                    for s, (name, _) in enumerate(synonyms):
                        u = _u(
                            u0=(s + 0.5) / len(synonyms),
                            u2=0.9,
                            u3=0.9,
                            u4=(t + 0.5) / n_np,
                            u5=(w + 0.5) / n_wrap,
                        )
                        caption = C.make_caption(cat, "red", pattern, u)
                        assert name in caption and "red" in caption, caption
                        seen.add(caption)
                    assert len(seen) == len(synonyms)
            for listing in range(len(C.LISTINGS)):
                names = {
                    C.make_caption(
                        cat, "red", pattern, _u(u0=(s + 0.5) / len(synonyms), u3=0.0, u4=(listing + 0.5) / 2)
                    )
                    for s in range(len(synonyms))
                }
                assert len(names) == len(synonyms)


def test_captions_vary_in_order_synonyms_and_optional_words():
    rng = np.random.default_rng(0)
    caps = [
        C.make_caption("t-shirt", "gray", "striped", rng.random(C.N_CAPTION_UNIFORMS)) for _ in range(400)
    ]
    assert any("tee" in c and "t-shirt" not in c for c in caps) and any("t-shirt" in c for c in caps)
    assert any("grey" in c for c in caps) and any("gray" in c for c in caps)
    assert any(c.index("gr") < c.index("strip") for c in caps if "strip" in c)  # colour first
    assert any(c.index("strip") < c.index("gr") for c in caps if "strip" in c)  # pattern first
    assert any("product photo" in c for c in caps) and any("white background" in c for c in caps)
    assert any(c.startswith(("gray", "grey", "strip")) for c in caps)  # no optional words at all
    assert len(set(caps)) > 100
    with pytest.raises(ValueError, match="category"):
        C.make_caption("hat", "red", "solid", [0.1] * C.N_CAPTION_UNIFORMS)


@needs_fmnist
def test_images_in_range_and_on_white(built):
    _, ds = built
    for name in SPLITS:
        for image in ds[name]["image"]:
            assert image.mode == "RGB" and image.size == (32, 32)
            a = np.asarray(image)
            assert a.dtype == np.uint8
            border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
            assert (border == 255).all()  # white studio backdrop
            assert (np.abs(a.astype(int) - 255).max(axis=-1) > 30).mean() > 0.05  # a visible product


@needs_fmnist
def test_white_and_black_items_are_distinguishable_from_backdrop(built):
    _, ds = built
    seen = set()
    for name in SPLITS:
        split = ds[name]
        for image, c in zip(split["image"], split["color"]):
            color = COLOR_NAMES[c]
            if color not in ("white", "black"):
                continue
            seen.add(color)
            a = np.asarray(image).astype(int)
            mask = garment_mask(a.astype(np.uint8))
            assert mask.sum() >= 6, color  # the garment is segmentable from the backdrop
            # the outline separates the garment from the backdrop: a closed ring of dark pixels
            dark = (255 - a).max(axis=-1) > 40
            assert dark.sum() >= 20
            if color == "white":
                assert a[mask].mean() > 200  # yet the garment itself stays white
    assert seen == {"white", "black"}


@needs_fmnist
def test_measure_color_on_built_items(built):
    _, ds = built
    total = correct = 0
    for split in ds.values():
        for image, c in zip(split["image"], split["color"]):
            total += 1
            correct += measure_color(image) == COLOR_NAMES[c]
    assert correct / total >= 0.97, correct / total


@needs_fmnist
def test_recolorer_renders_train_garments_in_every_colour(built):
    out, ds = built
    rec = CatalogRecolorer(out, "train")
    assert len(rec) == len(ds["train"])
    rows = np.arange(len(rec))
    originals = np.stack([np.asarray(im.convert("RGB")) for im in ds["train"]["image"]])
    np.testing.assert_array_equal(rec.original(rows), originals)  # the build recipe, row for row

    again = rec(rows, np.random.default_rng(3))
    assert again.shape == originals.shape and again.dtype == np.uint8
    np.testing.assert_array_equal(again, rec(rows, np.random.default_rng(3)))  # seeded
    assert (again != originals).any(axis=(1, 2, 3)).mean() > 0.8  # most rows changed colour
    # Every colour reaches a category, held-out pairs included (white coats never occur in train).
    coat = C.CATEGORY_NAMES.index("coat")
    coats = np.flatnonzero(np.asarray(ds["train"]["category"]) == coat)
    assert len(coats) and "white" not in {COLOR_NAMES[c] for c in np.asarray(ds["train"]["color"])[coats]}
    rng = np.random.default_rng(0)
    seen = {measure_color(im) for _ in range(40) for im in rec(coats[:1], rng)}
    assert "white" in seen and len(seen) >= 8, seen


def test_recolorer_needs_a_built_catalogue(tmp_path):
    with pytest.raises(ValueError, match="no build_info.json"):
        CatalogRecolorer(tmp_path)


@needs_fmnist
def test_classifier_script_recolors_only_the_catalogue_as_built(built, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train_scripts"))
    import train_attribute_classifier as script

    out, ds = built
    argv = ["--dataset_name", str(out), "--max_train_steps", "2", "--train_batch_size", "8",
            "--block_out_channels", "8", "16", "--validation_steps", "2", "--recolor_prob", "0.5",
            "--output_dir", str(tmp_path / "cls")]
    assert script.main(argv) == 0
    assert json.loads((tmp_path / "cls" / "metrics.json").read_text())["training"]["recolor_prob"] == 0.5
    images = np.stack([np.asarray(im.convert("RGB")) for im in ds["train"]["image"]])
    images[7, 0, 0] ^= 1  # one pixel of one row edited
    with pytest.raises(ValueError, match="not the ones its build_info.json renders"):
        script.load_recolorer(str(out), "train", images)


@needs_fmnist
def test_card_contact_sheet_and_info(built):
    out, ds = built
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: mit\n")
    for needle in ("Fashion-MNIST", "dataset-fashion-mnist", "MIT", "## Columns", "## Splits", "## Recipe"):
        assert needle in card
    for color, cat in HELD_OUT_PAIRS:
        assert f"- {color} {cat}" in card
    for name in SPLITS:
        assert f"| `{name}` | {len(ds[name]):,} |" in card
    info = json.loads((out / "build_info.json").read_text())
    assert info["split_sizes"] == {k: len(v) for k, v in ds.items()}
    assert [tuple(p) for p in info["held_out_pairs"]] == HELD_OUT_PAIRS
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.format == "PNG" and sheet.size[0] >= 6 * 128


@needs_fmnist
def test_parquet_export_roundtrip(built, tmp_path):
    out, ds = built
    paths = export_parquet(out, tmp_path / "pq")
    assert sorted(p.name for p in paths) == sorted(f"{s}.parquet" for s in SPLITS)
    from datasets import Dataset

    back = Dataset.from_parquet(str(tmp_path / "pq" / "validation.parquet"), cache_dir=str(tmp_path / "c"))
    assert back["text"] == ds["validation"]["text"]
    assert back.features["color"].names == COLOR_NAMES


@needs_fmnist
def test_push_to_hub_uses_datasets_api(built, monkeypatch):
    out, _ = built
    import datasets
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw.get("repo_type")))

        def upload_file(self, path_or_fileobj, path_in_repo, repo_id, repo_type):
            calls.append(("upload_file", path_in_repo, repo_type))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(
        datasets.DatasetDict,
        "push_to_hub",
        lambda self, repo_id, **kw: calls.append(("push_to_hub", repo_id, list(self))),
    )
    push_catalog_to_hub(out, "me/fashion-catalog")
    assert calls[0] == ("create_repo", "me/fashion-catalog", "dataset")
    assert calls[1] == ("upload_file", "README.md", "dataset")  # the card first, so push_to_hub keeps it
    assert calls[2] == ("push_to_hub", "me/fashion-catalog", list(SPLITS))
    assert calls[3] == ("upload_file", "contact_sheet.png", "dataset")


def test_missing_debian_data_names_package_and_command(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build_fashion_catalog(tmp_path / "out", source_dir=tmp_path, limit=5)
    assert "dataset-fashion-mnist" in str(err.value) and "apt-get install -y dataset-fashion-mnist" in str(
        err.value
    )
    assert not (tmp_path / "out").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="resolution"):
        build_fashion_catalog(tmp_path / "a", resolution=48)
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        build_fashion_catalog(tmp_path / "exists")


def test_cli_missing_data_exit_code(tmp_path, capsys):
    from prodimg.cli import main

    rc = main(
        ["build-dataset", "fashion-catalog", "--out", str(tmp_path / "o"), "--source_dir", str(tmp_path)]
    )
    assert rc == 2
    assert "apt-get install -y dataset-fashion-mnist" in capsys.readouterr().err


@needs_fmnist
def test_cli_builds(tmp_path, capsys):
    from prodimg.cli import main

    out = tmp_path / "cli"
    rc = main(
        [
            "build-dataset",
            "fashion-catalog",
            "--out",
            str(out),
            "--limit",
            "5",
            "--resolution",
            "64",
            "--parquet",
        ]
    )
    assert rc == 0
    assert "built fashion-catalog" in capsys.readouterr().out
    from datasets import load_from_disk

    ds = load_from_disk(str(out))
    assert ds["train"][0]["image"].size == (64, 64)
    assert (out / "parquet" / "test_unseen_pairs.parquet").is_file()


def _synthetic_garments(n=4):
    """28x28 'garments' without Fashion-MNIST: shaded rectangles with a hole-free silhouette."""
    img = np.zeros((n, 28, 28), np.uint8)
    yy, xx = np.mgrid[0:28, 0:28]
    shade = (120 + 100 * np.sin(xx / 4.0) * np.cos(yy / 5.0)).clip(30, 255).astype(np.uint8)
    img[:, 3:25, 6:22] = shade[3:25, 6:22]
    return img


def test_render_shapes_and_backdrop_without_fmnist():
    images = _synthetic_garments(8)
    ids = np.arange(8) % 11
    base = render.jitter_colors(ids, np.full((8, 3), 0.5))
    for res in (32, 64):
        out = render.render_garments(
            images,
            base,
            render.pattern_colors(ids, base),
            np.arange(8) % 4,
            np.zeros(8, int),
            np.full(8, 4),
            np.zeros(8, int),
            np.zeros(8, int),
            res,
        )
        assert out.shape == (8, res, res, 3) and out.dtype == np.uint8
        assert (out[:, 0] == 255).all() and (out[:, :, -1] == 255).all()
    with pytest.raises(ValueError, match="resolution"):
        render.render_garments(images, base, base, np.zeros(8, int), *([np.zeros(8, int)] * 4), 30)


def test_jitter_keeps_colours_in_their_class():
    from prodimg.data.color_measure import nearest_color
    from prodimg.data.colorspace import srgb_to_lab

    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(11), 200)
    for u in (rng.random((len(ids), 3)), np.zeros((len(ids), 3)), np.full((len(ids), 3), 0.999)):
        rgb = render.jitter_colors(ids, u)
        got = [nearest_color(lab) for lab in srgb_to_lab(rgb)]
        assert got == [COLOR_NAMES[i] for i in ids]


def test_fill_holes():
    m = np.zeros((1, 7, 7), bool)
    m[0, 1:6, 1:6] = True
    m[0, 3, 3] = False  # an enclosed hole is filled
    assert render.fill_holes(m)[0, 3, 3]
    m[0, 3, 1:3] = False  # a channel to the outside: no longer a hole
    assert not render.fill_holes(m)[0, 3, 3]
