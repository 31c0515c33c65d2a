"""Loading any captioned image dataset for training, with explicit transforms and bad-data handling.

Sources (diffusers' flag names):

- ``dataset_name``: a Hub dataset id (with ``dataset_config_name``), or a local path: a
  ``save_to_disk`` folder, a parquet file, or a folder of parquet files;
- ``train_data_dir``: an imagefolder with ``metadata.jsonl`` (``file_name`` + caption), as in
  diffusers' ``train_text_to_image.py`` (a ``save_to_disk`` or parquet folder works there too).

``load_image_text_dataset`` returns a ``datasets.Dataset`` whose rows have been checked (see
:func:`validate_image_text_dataset`); :class:`ProductImageDataset` wraps it for a torch
``DataLoader`` and yields ``{"pixel_values": float32 (3, R, R) in [-1, 1], "text": str}``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_COLUMN = "image"
DEFAULT_CAPTION_COLUMN = "text"
MIN_IMAGE_SIZE = 8
"""Images whose width or height is below this many pixels are bad rows."""
MAX_IMAGE_PIXELS = 89_478_485
"""Images with more pixels than this are treated as decompression bombs (Pillow's own default)."""
MAX_BAD_FRACTION = 0.01
"""Abort when more than this fraction of rows is bad."""

_PARQUET_SHARD = re.compile(r"^(?P<split>.+?)(-\d{5}-of-\d{5})?$")
_KNOWN_SPLITS = {"train", "validation", "valid", "val", "test", "dev"}
_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


class BadDataError(ValueError):
    """Too many bad rows (or bad rows while ``skip_bad=False``)."""


@dataclass
class BadRow:
    index: int
    reason: str
    file: str | None = None

    def __str__(self) -> str:
        where = f"row {self.index}" + (f" ({self.file})" if self.file else "")
        return f"{where}: {self.reason}"


@dataclass
class ValidationReport:
    num_rows: int
    bad_rows: list[BadRow] = field(default_factory=list)

    @property
    def num_bad(self) -> int:
        return len(self.bad_rows)

    @property
    def bad_fraction(self) -> float:
        return self.num_bad / self.num_rows if self.num_rows else 0.0

    def summary(self, max_listed: int = 20) -> str:
        if not self.bad_rows:
            return f"all {self.num_rows} rows are readable"
        reasons: dict[str, int] = {}
        for row in self.bad_rows:
            key = row.reason.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        by_reason = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
        listed = "\n".join(f"  {row}" for row in self.bad_rows[:max_listed])
        more = f"\n  ... and {self.num_bad - max_listed} more" if self.num_bad > max_listed else ""
        return f"{self.num_bad} of {self.num_rows} rows are bad ({self.bad_fraction:.2%}; {by_reason}):\n{listed}{more}"


# ----------------------------------------------------------------------------------------------
# image decoding and transforms


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to RGB on purpose, never implicitly.

    - EXIF orientation is applied;
    - images with alpha (RGBA, LA, PA, palette with transparency) are composited onto white;
    - grayscale (1, L) is replicated to three channels; 16/32-bit integer grayscale (I;16*, I) is
      scaled from 0..65535 to 0..255;
    - other modes (CMYK, YCbCr, LAB, HSV, F, P without transparency) use Pillow's conversion.
    """
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB":
        return image
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(image, dtype=np.float64)
        arr = np.clip(np.rint(arr / 65535.0 * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    return image.convert("RGB")


def open_image(entry: Any, base_dir: str | os.PathLike | None = None) -> tuple[Image.Image, str | None]:
    """Open a dataset image cell: a PIL image, ``{"bytes", "path"}``, raw bytes or a path string.

    Returns ``(image, file)``; the image is opened lazily (call ``load()`` to decode).
    """
    if isinstance(entry, Image.Image):
        return entry, getattr(entry, "filename", None) or None
    if isinstance(entry, dict):
        data, path = entry.get("bytes"), entry.get("path")
        if data is not None:
            return Image.open(io.BytesIO(data)), path
        if path is not None:
            return Image.open(_resolve(path, base_dir)), path
        raise ValueError("missing image (neither bytes nor path)")
    if isinstance(entry, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(entry))), None
    if isinstance(entry, (str, os.PathLike)):
        return Image.open(_resolve(entry, base_dir)), str(entry)
    if entry is None:
        raise ValueError("missing image (None)")
    raise TypeError(f"cannot read an image from a {type(entry).__name__}")


def _entry_file(entry: Any) -> str | None:
    if isinstance(entry, dict):
        return entry.get("path")
    if isinstance(entry, (str, os.PathLike)):
        return str(entry)
    return getattr(entry, "filename", None) or None


def _resolve(path, base_dir) -> str:
    path = Path(path)
    if not path.is_absolute() and base_dir is not None and not path.exists():
        path = Path(base_dir) / path
    return str(path)


def check_image(
    entry: Any,
    *,
    min_image_size: int = MIN_IMAGE_SIZE,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    decode: bool = True,
    base_dir: str | os.PathLike | None = None,
) -> tuple[str | None, str | None]:
    """Check one image cell. Returns ``(reason, file)``; ``reason`` is None when the image is good."""
    file = _entry_file(entry)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image, file = open_image(entry, base_dir)
            width, height = image.size
            if width * height > max_image_pixels:
                return (
                    f"decompression bomb: {width}x{height} = {width * height:,} pixels > limit {max_image_pixels:,}",
                    file,
                )
            if min(width, height) < min_image_size:
                return f"too small: {width}x{height} < minimum side {min_image_size}", file
            if decode:
                image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        return f"decompression bomb: {err}", file
    except FileNotFoundError as err:
        return f"file not found: {err.filename or err}", file
    except UnidentifiedImageError:
        return "unreadable: not a recognised image (corrupt header or wrong format)", file
    except (OSError, SyntaxError, ValueError, TypeError) as err:
        msg = str(err)
        kind = "truncated" if "truncated" in msg.lower() else "corrupt"
        return f"{kind}: {msg}", file
    return None, file


def _random_int(high: int, generator=None) -> int:
    import torch

    return int(torch.randint(high, (1,), generator=generator).item()) if high > 0 else 0


class ImageTransform:
    """RGB conversion, resize (shorter side) + crop to ``resolution``, optional flip, scale to [-1, 1].

    Returns a float32 tensor (3, resolution, resolution). Random crop/flip use torch's RNG (or
    ``generator``), so DataLoader worker seeding applies.
    """

    def __init__(
        self,
        resolution: int,
        center_crop: bool = True,
        random_flip: bool = False,
        interpolation: str = "bilinear",
    ):
        if not isinstance(resolution, int) or resolution <= 0:
            raise ValueError(f"resolution must be a positive int, got {resolution!r}")
        if interpolation not in _INTERPOLATION:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATION)}, got {interpolation!r}")
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.interpolation = interpolation

    def __repr__(self) -> str:
        return (
            f"ImageTransform(resolution={self.resolution}, center_crop={self.center_crop}, "
            f"random_flip={self.random_flip}, interpolation={self.interpolation!r})"
        )

    def resize_crop(self, image: Image.Image, generator=None) -> Image.Image:
        r = self.resolution
        w, h = image.size
        if min(w, h) != r:
            scale = r / min(w, h)
            size = (max(r, round(w * scale)), max(r, round(h * scale)))
            image = image.resize(size, _INTERPOLATION[self.interpolation])
            w, h = image.size
        if (w, h) != (r, r):
            if self.center_crop:
                left, top = (w - r) // 2, (h - r) // 2
            else:
                left, top = _random_int(w - r + 1, generator), _random_int(h - r + 1, generator)
            image = image.crop((left, top, left + r, top + r))
        return image

    def __call__(self, image: Image.Image, generator=None):
        import torch

        image = self.resize_crop(to_rgb(image), generator)
        arr = np.asarray(image, dtype=np.float32)
        if self.random_flip and torch.rand(1, generator=generator).item() < 0.5:
            arr = arr[:, ::-1]
        arr = arr / 127.5 - 1.0
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def pick_caption(caption: Any, index: int | None = None, rng: random.Random | None = None) -> str:
    """A caption string from a cell holding a string or a list of strings (one chosen at random)."""
    if isinstance(caption, str):
        return caption
    if isinstance(caption, (list, tuple)) and caption and all(isinstance(c, str) for c in caption):
        return (rng or random).choice(list(caption))
    where = f"row {index}: " if index is not None else ""
    raise ValueError(f"{where}caption must be a string or a non-empty list of strings, got {caption!r}")


class ProductImageDataset:
    """A torch map-style dataset over an image/caption ``datasets.Dataset``.

    Items are dicts ``{"pixel_values": float32 (3, R, R) in [-1, 1], "text": str}`` plus any
    ``extra_columns`` (e.g. ``("category", "color", "pattern")``) as they are stored.
    """

    def __init__(
        self,
        dataset,
        resolution: int,
        image_column: str = DEFAULT_IMAGE_COLUMN,
        caption_column: str = DEFAULT_CAPTION_COLUMN,
        center_crop: bool = True,
        random_flip: bool = False,
        interpolation: str = "bilinear",
        extra_columns: Sequence[str] = (),
        base_dir: str | os.PathLike | None = None,
    ):
        from datasets import Image as ImageFeature

        check_columns(dataset, [image_column, caption_column, *extra_columns])
        if len(dataset) == 0:
            raise ValueError("the dataset is empty")
        if isinstance(dataset.features[image_column], ImageFeature):
            dataset = dataset.cast_column(image_column, ImageFeature(decode=False))
        self.dataset = dataset.select_columns([image_column, caption_column, *extra_columns])
        self.image_column = image_column
        self.caption_column = caption_column
        self.extra_columns = tuple(extra_columns)
        self.base_dir = base_dir
        self.transform = ImageTransform(resolution, center_crop, random_flip, interpolation)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        row = self.dataset[index]
        try:
            image, _ = open_image(row[self.image_column], self.base_dir)
            image.load()
        except Exception as err:
            file = _entry_file(row[self.image_column])
            where = f"row {index}" + (f" ({file})" if file else "")
            raise ValueError(f"{where}: cannot decode image: {err}") from err
        item = {"pixel_values": self.transform(image), "text": pick_caption(row[self.caption_column], index)}
        for column in self.extra_columns:
            item[column] = row[column]
        return item


# ----------------------------------------------------------------------------------------------
# sources


def check_columns(dataset, columns: Sequence[str]) -> None:
    existing = list(dataset.column_names)
    missing = [c for c in columns if c not in existing]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise ValueError(
            f"column {names} not found in the dataset; its columns are {existing} "
            "(choose with --image_column / --caption_column)"
        )
    if len(set(columns)) != len(columns):  # select_columns would fail with a pyarrow KeyError
        raise ValueError(f"{list(columns)} names a column twice (the image and caption columns must differ)")


def _parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.parquet") if p.is_file())


def detect_source(path: str | os.PathLike) -> str:
    """Kind of a local dataset path: "disk" (save_to_disk), "parquet" or "imagefolder"."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".parquet":
            return "parquet"
        raise ValueError(f"{path} is a file but not a .parquet file")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return "disk"
    if any((path / name).is_file() for name in ("metadata.jsonl", "metadata.csv", "metadata.parquet")):
        return "imagefolder"
    if _parquet_files(path):
        return "parquet"
    return "imagefolder"


def _check_metadata_jsonl(folder: Path, caption_column: str) -> None:
    """Fail early, naming file and line, on unparsable metadata, a file_name outside the folder or non-string
    captions (and on a metadata file without rows, which ``datasets`` fails on with an IndexError)."""
    for meta in sorted(folder.rglob("metadata.jsonl")):
        records = 0
        with open(meta, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise ValueError(f"{meta} line {line_no}: not valid UTF-8 ({err})") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{meta} line {line_no}: not valid JSON ({err})") from err
                where = f"{meta} line {line_no}"
                if not isinstance(record, dict):  # a data error, hence ValueError
                    raise ValueError(f"{where}: not a JSON object ({type(record).__name__})")  # noqa: TRY004
                records += 1
                name = record.get("file_name")
                norm = os.path.normpath(name) if isinstance(name, str) else ""
                if os.path.isabs(norm) or norm.split(os.sep)[0] == "..":
                    raise ValueError(f"{where}: file_name {name!r} points outside {meta.parent}")
                if caption_column in record:
                    try:
                        pick_caption(record[caption_column])
                    except ValueError:
                        raise ValueError(
                            f"{meta} line {line_no} (file_name={record.get('file_name')!r}): caption "
                            f"{caption_column!r} must be a string or a non-empty list of strings, "
                            f"got {record[caption_column]!r}"
                        ) from None
        if records == 0:
            raise ValueError(f"{meta} has no rows (no JSON lines)")


def _select_split(data, split: str, source: str):
    from datasets import DatasetDict

    if isinstance(data, DatasetDict):
        if split not in data:
            raise ValueError(f"split {split!r} not found in {source}; available splits: {list(data)}")
        return data[split]
    return data


def open_source(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | os.PathLike | None = None,
    split: str = "train",
    cache_dir: str | None = None,
    caption_column: str = DEFAULT_CAPTION_COLUMN,
):
    """Open one split of any supported source, without validating rows. Returns ``(dataset, base_dir)``."""
    import datasets

    if dataset_name is None and train_data_dir is None:
        raise ValueError("pass either dataset_name (Hub id or local path) or train_data_dir")
    if dataset_name is not None and train_data_dir is not None:
        raise ValueError("pass only one of dataset_name and train_data_dir")
    target = train_data_dir if train_data_dir is not None else dataset_name
    local = Path(target).expanduser()
    if train_data_dir is None and not local.exists() and not str(target).startswith((".", "/", "~")):
        data = datasets.load_dataset(str(dataset_name), dataset_config_name, cache_dir=cache_dir)
        return _select_split(data, split, f"Hub dataset {dataset_name!r}"), None
    kind = detect_source(local)
    if kind == "disk":
        try:
            data = datasets.load_from_disk(str(local))
        except IndexError as err:  # datasets cannot load a split saved with 0 rows (it has 0 shards)
            raise ValueError(f"{local} holds a split with 0 rows, which cannot be loaded") from err
        return _select_split(data, split, str(local)), local
    if kind == "parquet":
        files = _parquet_files(local)
        groups: dict[str, list[str]] = {}
        for f in files:
            name = _PARQUET_SHARD.match(f.stem).group("split")
            groups.setdefault(name, []).append(str(f))
        if local.is_file():
            chosen = [str(local)]
        elif split in groups:
            chosen = groups[split]
        elif split == "train" and not _KNOWN_SPLITS & set(groups):
            chosen = [str(f) for f in files]
        else:
            raise ValueError(f"split {split!r} not found in {local}; parquet splits found: {sorted(groups)}")
        try:
            data = datasets.load_dataset(
                "parquet", data_files={split: chosen}, split=split, cache_dir=cache_dir
            )
        except ValueError as err:
            if "corresponds to no data" in str(err):
                raise ValueError(f"split {split!r} of {local} is empty (0 rows)") from err
            raise
        return data, local if local.is_dir() else local.parent
    _check_metadata_jsonl(local, caption_column)
    try:
        data = datasets.load_dataset("imagefolder", data_dir=str(local), cache_dir=cache_dir)
    except datasets.exceptions.DatasetGenerationError as err:  # bad data met while reading the files
        raise ValueError(f"{local}: cannot read the imagefolder: {err.__cause__ or err}") from err
    return _select_split(data, split, str(local)), local


def validate_image_text_dataset(
    dataset,
    image_column: str = DEFAULT_IMAGE_COLUMN,
    caption_column: str = DEFAULT_CAPTION_COLUMN,
    *,
    min_image_size: int = MIN_IMAGE_SIZE,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    decode: bool = True,
    base_dir: str | os.PathLike | None = None,
    batch_size: int = 1000,
) -> ValidationReport:
    """Check every row: columns exist, captions are strings (else ``ValueError`` naming the row),
    images open, are not bombs, are at least ``min_image_size`` and (``decode=True``) fully decode.

    Bad images are collected in the returned report, not raised.
    """
    from datasets import Image as ImageFeature

    check_columns(dataset, [image_column, caption_column])
    if len(dataset) == 0:
        raise ValueError("the dataset split is empty (0 rows)")
    view = dataset.select_columns([image_column, caption_column])
    if isinstance(view.features[image_column], ImageFeature):
        view = view.cast_column(image_column, ImageFeature(decode=False))
    report = ValidationReport(num_rows=len(dataset))
    start = 0
    for batch in view.iter(batch_size=batch_size):
        for offset, (entry, caption) in enumerate(zip(batch[image_column], batch[caption_column])):
            index = start + offset
            if not (
                isinstance(caption, str)
                or (
                    isinstance(caption, (list, tuple))
                    and caption
                    and all(isinstance(c, str) for c in caption)
                )
            ):
                file = _entry_file(entry)
                where = f"row {index}" + (f" ({file})" if file else "")
                raise ValueError(
                    f"{where}: caption column {caption_column!r} must hold a string or a non-empty list of "
                    f"strings, got {type(caption).__name__} {caption!r}"
                )
            reason, file = check_image(
                entry,
                min_image_size=min_image_size,
                max_image_pixels=max_image_pixels,
                decode=decode,
                base_dir=base_dir,
            )
            if reason is not None:
                report.bad_rows.append(BadRow(index, reason, file))
        start += len(batch[caption_column])
    return report


def load_image_text_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | os.PathLike | None = None,
    *,
    split: str = "train",
    image_column: str = DEFAULT_IMAGE_COLUMN,
    caption_column: str = DEFAULT_CAPTION_COLUMN,
    cache_dir: str | None = None,
    max_samples: int | None = None,
    validate: bool = True,
    decode_check: bool = True,
    skip_bad: bool = True,
    max_bad_fraction: float = MAX_BAD_FRACTION,
    min_image_size: int = MIN_IMAGE_SIZE,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    return_report: bool = False,
):
    """Load one split of a captioned image dataset and drop bad rows.

    Args:
        dataset_name: Hub dataset id, or a local ``save_to_disk`` folder / parquet file / parquet folder.
        dataset_config_name: Hub config name.
        train_data_dir: an imagefolder with ``metadata.jsonl`` (or any local folder as above).
        split: which split (error listing the available ones if absent).
        image_column, caption_column: column names (error listing the existing columns if absent).
        max_samples: keep only the first N rows (before validation).
        validate: check every row (see :func:`validate_image_text_dataset`).
        decode_check: fully decode every image while validating (finds truncated files).
        skip_bad: drop bad image rows (reported with index/file and reason, then a summary);
            ``False`` raises on the first report instead.
        max_bad_fraction: raise :class:`BadDataError` if more than this fraction of rows is bad.
        min_image_size, max_image_pixels: size floor and decompression-bomb limit.
        return_report: also return the :class:`ValidationReport`.

    Returns:
        The ``datasets.Dataset`` (image column still in its stored form), or
        ``(dataset, report)`` with ``return_report=True``.
    """
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    dataset, base_dir = open_source(
        dataset_name, dataset_config_name, train_data_dir, split, cache_dir, caption_column
    )
    check_columns(dataset, [image_column, caption_column])
    if len(dataset) == 0:
        raise ValueError(f"split {split!r} of {dataset_name or train_data_dir} is empty (0 rows)")
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    report = ValidationReport(num_rows=len(dataset))
    if validate:
        report = validate_image_text_dataset(
            dataset,
            image_column,
            caption_column,
            min_image_size=min_image_size,
            max_image_pixels=max_image_pixels,
            decode=decode_check,
            base_dir=base_dir,
        )
        for row in report.bad_rows[:50]:
            logger.warning("bad data: %s", row)
        if report.bad_rows:
            if not skip_bad:
                raise BadDataError(f"bad rows found (skip_bad=False): {report.summary()}")
            if report.bad_fraction > max_bad_fraction:
                raise BadDataError(
                    f"{report.bad_fraction:.2%} of rows are bad, more than max_bad_fraction="
                    f"{max_bad_fraction:.2%}: {report.summary()}"
                )
            bad = {row.index for row in report.bad_rows}
            dataset = dataset.select([i for i in range(len(dataset)) if i not in bad])
            logger.warning("skipped bad rows: %s", report.summary(max_listed=5))
    return (dataset, report) if return_report else dataset


__all__ = [
    "BadDataError",
    "BadRow",
    "ImageTransform",
    "ProductImageDataset",
    "ValidationReport",
    "check_columns",
    "check_image",
    "detect_source",
    "load_image_text_dataset",
    "open_image",
    "open_source",
    "pick_caption",
    "to_rgb",
    "validate_image_text_dataset",
]
