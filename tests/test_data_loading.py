"""Loading captioned image datasets from every source kind, the transforms, and bad data."""

import io
import json
import logging
import struct
import zlib

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, Features, Sequence, Value
from datasets import Image as ImageFeature
from PIL import Image

from prodimg.data.loading import (
    BadDataError,
    ImageTransform,
    ProductImageDataset,
    check_image,
    detect_source,
    load_image_text_dataset,
    pick_caption,
    to_rgb,
)

COLORS = [(255, 0, 0), (0, 128, 0), (0, 0, 255), (200, 200, 0), (0, 0, 0), (255, 255, 255)]


def png_bytes(image: Image.Image, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def make_rows(n=6, size=(40, 30)):
    images = [png_bytes(Image.new("RGB", size, COLORS[i % len(COLORS)])) for i in range(n)]
    return images, [f"item {i}" for i in range(n)]


def make_dataset(images, texts, caption_feature=None, image_column="image", caption_column="text"):
    features = Features({image_column: ImageFeature(), caption_column: caption_feature or Value("string")})
    return Dataset.from_dict(
        {image_column: [{"bytes": b, "path": None} for b in images], caption_column: texts}, features=features
    )


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "hf_cache")


# ---------------------------------------------------------------- sources


def test_save_to_disk_folder_dict_and_single(tmp_path):
    images, texts = make_rows()
    DatasetDict(
        {"train": make_dataset(images, texts), "test": make_dataset(images[:2], texts[:2])}
    ).save_to_disk(str(tmp_path / "dd"))
    make_dataset(images, texts).save_to_disk(str(tmp_path / "single"))
    assert detect_source(tmp_path / "dd") == "disk"
    ds = load_image_text_dataset(str(tmp_path / "dd"))
    assert len(ds) == 6 and ds["text"] == texts
    assert len(load_image_text_dataset(str(tmp_path / "dd"), split="test")) == 2
    assert len(load_image_text_dataset(str(tmp_path / "single"))) == 6
    with pytest.raises(ValueError, match=r"split 'validation' not found.*\['train', 'test'\]"):
        load_image_text_dataset(str(tmp_path / "dd"), split="validation")


def test_parquet_file_and_folder(tmp_path, cache):
    images, texts = make_rows()
    (tmp_path / "pq").mkdir()
    make_dataset(images, texts).to_parquet(str(tmp_path / "pq" / "train-00000-of-00001.parquet"))
    make_dataset(images[:3], texts[:3]).to_parquet(str(tmp_path / "pq" / "validation.parquet"))
    assert detect_source(tmp_path / "pq") == "parquet"
    assert load_image_text_dataset(str(tmp_path / "pq"), cache_dir=cache)["text"] == texts
    assert len(load_image_text_dataset(str(tmp_path / "pq"), split="validation", cache_dir=cache)) == 3
    single = load_image_text_dataset(str(tmp_path / "pq" / "validation.parquet"), cache_dir=cache)
    assert single["text"] == texts[:3]
    with pytest.raises(ValueError, match="parquet splits found"):
        load_image_text_dataset(str(tmp_path / "pq"), split="test", cache_dir=cache)


def test_imagefolder_with_metadata(tmp_path, cache):
    folder = tmp_path / "imgs"
    folder.mkdir()
    with open(folder / "metadata.jsonl", "w") as f:
        for i, color in enumerate(COLORS[:4]):
            Image.new("RGB", (24, 24), color).save(folder / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", "text": f"swatch {i}"}) + "\n")
    ds = load_image_text_dataset(train_data_dir=str(folder), cache_dir=cache)
    assert sorted(ds["text"]) == [f"swatch {i}" for i in range(4)]
    item = ProductImageDataset(ds, 16)[0]
    assert item["pixel_values"].shape == (3, 16, 16)


def test_hub_dataset_id_passes_name_and_config(monkeypatch):
    import datasets

    images, texts = make_rows(3)
    seen = {}

    def fake_load_dataset(path, name=None, **kw):
        seen.update(path=path, name=name, cache_dir=kw.get("cache_dir"))
        return DatasetDict({"train": make_dataset(images, texts)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_image_text_dataset("someone/product-photos", "small", cache_dir="/c")
    assert seen == {"path": "someone/product-photos", "name": "small", "cache_dir": "/c"}
    assert ds["text"] == texts


def test_custom_columns_and_source_arguments(tmp_path):
    images, texts = make_rows(3)
    make_dataset(images, texts, image_column="img", caption_column="caption").save_to_disk(
        str(tmp_path / "d")
    )
    ds = load_image_text_dataset(str(tmp_path / "d"), image_column="img", caption_column="caption")
    item = ProductImageDataset(ds, 8, image_column="img", caption_column="caption")[1]
    assert item["text"] == "item 1"
    with pytest.raises(ValueError, match="either dataset_name"):
        load_image_text_dataset()
    with pytest.raises(ValueError, match="only one"):
        load_image_text_dataset("a", train_data_dir="b")


# ---------------------------------------------------------------- transforms


def test_transform_range_shape_and_values():
    t = ImageTransform(8)
    white = t(Image.new("RGB", (8, 8), (255, 255, 255)))
    black = t(Image.new("RGB", (8, 8), (0, 0, 0)))
    assert white.dtype == torch.float32 and white.shape == (3, 8, 8)
    assert torch.all(white == 1.0) and torch.all(black == -1.0)
    red = t(Image.new("RGB", (8, 8), (255, 0, 0)))
    assert torch.all(red[0] == 1) and torch.all(red[1:] == -1)


def test_rgb_conversion_on_purpose():
    gray = to_rgb(Image.new("L", (4, 4), 100))
    assert gray.mode == "RGB" and np.asarray(gray)[0, 0].tolist() == [100, 100, 100]
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red -> white
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [255, 255, 255]
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert np.asarray(to_rgb(half))[0, 0].tolist() == [127, 127, 127]
    la = Image.new("LA", (4, 4), (0, 0))
    assert np.asarray(to_rgb(la))[0, 0].tolist() == [255, 255, 255]
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([10, 20, 30] * 256)
    pal.info["transparency"] = 0
    assert np.asarray(to_rgb(pal))[0, 0].tolist() == [255, 255, 255]
    i16 = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert np.asarray(to_rgb(i16))[0, 0].tolist() == [255, 255, 255]
    cmyk = Image.new("CMYK", (4, 4), (0, 0, 0, 0))
    assert to_rgb(cmyk).mode == "RGB"


def test_resize_center_crop_and_flip():
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :10] = (255, 0, 0)  # left quarter red: cropped away by the centre crop
    img[:, 10:20] = (0, 0, 255)
    img[:, 20:] = (0, 255, 0)
    out = ImageTransform(10, interpolation="nearest")(Image.fromarray(img))
    assert out.shape == (3, 10, 10)
    arr = ((out.numpy().transpose(1, 2, 0) + 1) * 127.5).round()
    assert arr[:, 0].tolist() == [[0, 0, 255]] * 10  # left column blue
    assert arr[:, -1].tolist() == [[0, 255, 0]] * 10  # right column green
    flip = ImageTransform(10, random_flip=True)
    results = {
        tuple(flip(Image.fromarray(img), generator=torch.Generator().manual_seed(s))[:, 0, 0].tolist())
        for s in range(12)
    }
    assert len(results) == 2  # flipped sometimes, not always
    g = ImageTransform(10, random_flip=True)
    a = g(Image.fromarray(img), generator=torch.Generator().manual_seed(3))
    b = g(Image.fromarray(img), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_product_image_dataset_with_dataloader():
    images, texts = make_rows(8)
    ds = make_dataset(images, texts).add_column("color", list(range(8)))
    pid = ProductImageDataset(ds, 16, extra_columns=("color",))
    batch = next(iter(torch.utils.data.DataLoader(pid, batch_size=4, num_workers=0)))
    assert batch["pixel_values"].shape == (4, 3, 16, 16) and batch["pixel_values"].dtype == torch.float32
    assert batch["text"] == texts[:4] and batch["color"].tolist() == [0, 1, 2, 3]
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1


def test_caption_lists():
    images, _ = make_rows(2)
    ds = make_dataset(images, [["a", "b"], ["c"]], caption_feature=Sequence(Value("string")))
    ds = load_image_text_dataset_from(ds)
    pid = ProductImageDataset(ds, 8)
    assert pid[0]["text"] in ("a", "b") and pid[1]["text"] == "c"
    with pytest.raises(ValueError, match="row 3"):
        pick_caption([], index=3)


def load_image_text_dataset_from(ds, tmp=None, **kw):
    import tempfile

    d = tempfile.mkdtemp()
    ds.save_to_disk(d)
    return load_image_text_dataset(d, **kw)


# ---------------------------------------------------------------- bad data


def test_missing_column_lists_existing(tmp_path):
    images, texts = make_rows(3)
    make_dataset(images, texts).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"'caption' not found.*\['image', 'text'\]"):
        load_image_text_dataset(str(tmp_path / "d"), caption_column="caption")
    with pytest.raises(ValueError, match=r"'picture' not found.*\['image', 'text'\]"):
        load_image_text_dataset(str(tmp_path / "d"), image_column="picture")


@pytest.mark.parametrize("bad", [7, None])
def test_non_string_caption_names_the_row(bad):
    images, _ = make_rows(4)
    if bad is None:
        ds = make_dataset(images, ["a", "b", None, "d"])
        row = 2
    else:
        ds = make_dataset(images, [1, 2, 7, 3], caption_feature=Value("int64"))
        row = 0
    with pytest.raises(ValueError, match=rf"row {row}: caption column 'text'"):
        load_image_text_dataset_from(ds)


def test_non_string_caption_in_metadata_jsonl(tmp_path, cache):
    folder = tmp_path / "imgs"
    folder.mkdir()
    with open(folder / "metadata.jsonl", "w") as f:
        for i in range(3):
            Image.new("RGB", (16, 16)).save(folder / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", "text": 5 if i == 1 else "ok"}) + "\n")
    with pytest.raises(ValueError, match=r"line 2 \(file_name='1.png'\)"):
        load_image_text_dataset(train_data_dir=str(folder), cache_dir=cache)


def _bomb_png(width=100_000, height=100_000) -> bytes:
    """A valid PNG header that claims a huge size (the pixel data is never read)."""
    data = png_bytes(Image.new("L", (1, 1)))
    ihdr = struct.pack(">II", width, height) + data[24:29]
    chunk = b"IHDR" + ihdr
    return data[:12] + chunk + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF) + data[33:]


def _bad_rows_dataset(n_good=200):
    images, texts = make_rows(n_good)
    good_png = images[0]
    bad = {
        "truncated": good_png[: len(good_png) // 2],
        "unreadable": b"this is not an image",
        "decompression bomb": _bomb_png(),
        "too small": png_bytes(Image.new("RGB", (4, 4))),
    }
    images = images + list(bad.values())
    texts = texts + [f"bad {k}" for k in bad]
    return images, texts, bad


def test_check_image_reasons():
    _, _, bad = _bad_rows_dataset(1)
    for reason, data in bad.items():
        got, _ = check_image({"bytes": data, "path": None})
        assert got.startswith(reason), (reason, got)
    got, file = check_image({"bytes": None, "path": "/no/such/file.png"})
    assert got.startswith("file not found") and file == "/no/such/file.png"
    assert check_image(
        {"bytes": png_bytes(Image.new("RGB", (300, 300))), "path": None}, max_image_pixels=10_000
    )[0].startswith("decompression bomb")


def test_bad_rows_skipped_with_report_and_summary(caplog):
    images, texts, bad = _bad_rows_dataset(400)
    ds = make_dataset(images, texts)
    with caplog.at_level(logging.WARNING, logger="prodimg.data.loading"):
        out, report = load_image_text_dataset_from(ds, return_report=True)
    assert len(out) == 400 and report.num_bad == 4
    assert [r.index for r in report.bad_rows] == [400, 401, 402, 403]
    assert [r.reason.split(":")[0] for r in report.bad_rows] == list(bad)
    assert "bad text" not in " ".join(out["text"])
    log = caplog.text
    assert "row 400" in log and "truncated" in log and "4 of 404 rows are bad" in log


def test_too_many_bad_rows_abort_and_threshold_is_configurable():
    images, texts, _ = _bad_rows_dataset(100)  # 4 bad of 104 = 3.8% > 1%
    ds = make_dataset(images, texts)
    with pytest.raises(BadDataError, match=r"(?s)3.85% of rows are bad.*row 100"):
        load_image_text_dataset_from(ds)
    assert len(load_image_text_dataset_from(ds, max_bad_fraction=0.05)) == 100
    with pytest.raises(BadDataError, match="skip_bad=False"):
        load_image_text_dataset_from(ds, skip_bad=False, max_bad_fraction=1.0)


def test_bad_imagefolder_files_reported_with_file(tmp_path, cache):
    folder = tmp_path / "imgs"
    folder.mkdir()
    with open(folder / "metadata.jsonl", "w") as f:
        for i in range(3):
            Image.new("RGB", (16, 16), COLORS[i]).save(folder / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", "text": f"t{i}"}) + "\n")
    data = (folder / "1.png").read_bytes()
    (folder / "1.png").write_bytes(data[: len(data) // 2])
    ds, report = load_image_text_dataset(
        train_data_dir=str(folder), cache_dir=cache, max_bad_fraction=0.5, return_report=True
    )
    assert len(ds) == 2 and report.bad_rows[0].file.endswith("1.png")


def test_undecodable_image_at_getitem_names_the_row():
    images, texts = make_rows(2)
    ds = make_dataset([images[0], b"garbage"], texts)
    pid = ProductImageDataset(ds, 8)  # validation bypassed on purpose
    with pytest.raises(ValueError, match="row 1: cannot decode image"):
        pid[1]


def test_empty_dataset_and_split(tmp_path, cache):
    from prodimg.data.loading import validate_image_text_dataset

    empty = make_dataset([], [])
    empty.to_parquet(str(tmp_path / "empty.parquet"))
    with pytest.raises(ValueError, match="empty"):
        load_image_text_dataset(str(tmp_path / "empty.parquet"), cache_dir=cache)
    with pytest.raises(ValueError, match="empty"):
        validate_image_text_dataset(empty)
    with pytest.raises(ValueError, match="empty"):
        ProductImageDataset(empty, 8)
