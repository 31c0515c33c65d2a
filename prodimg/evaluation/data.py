"""A dataset split as evaluation needs it: uint8 images, captions and named label columns."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

LABEL_COLUMNS = ("category", "color", "pattern")


@dataclass
class LabeledSplit:
    """``images``: uint8 (N, R, R, 3); ``captions``: N strings; ``labels[column]``: N label names;
    ``label_names[column]``: the column's vocabulary (ClassLabel names, or the sorted distinct values)."""

    images: np.ndarray
    captions: list[str]
    labels: dict[str, list[str]] = field(default_factory=dict)
    label_names: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.captions)

    def label_ids(self, column: str) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.label_names[column])}
        return np.asarray([index[v] for v in self.labels[column]], dtype=np.int64)


def column_vocabulary(data, column: str) -> list[str]:
    """A label column's vocabulary: its ClassLabel names, or the sorted distinct values as strings."""
    from datasets import ClassLabel

    feature = data.features[column]
    return list(feature.names) if isinstance(feature, ClassLabel) else sorted({str(v) for v in data[column]})


def as_label_names(data, column: str, values: Sequence, vocabulary: Sequence[str]) -> list[str]:
    """``values`` of ``data``'s label ``column`` as names: ClassLabel ids through ``vocabulary``, other
    values as strings."""
    from datasets import ClassLabel

    if isinstance(data.features[column], ClassLabel):
        return [vocabulary[v] for v in values]
    return [str(v) for v in values]


def load_labeled_split(
    dataset_name: str | None = None,
    split: str = "test",
    resolution: int = 32,
    *,
    train_data_dir: str | None = None,
    dataset_config_name: str | None = None,
    image_column: str = "image",
    caption_column: str = "text",
    label_columns: Sequence[str] = LABEL_COLUMNS,
    max_samples: int | None = None,
    cache_dir: str | None = None,
    batch_size: int = 256,
) -> LabeledSplit:
    """The first ``max_samples`` rows of a split (bad rows dropped), images resized/cropped to
    ``resolution`` exactly as for training (``prodimg.data.ProductImageDataset``); the label columns
    that exist are kept, as names."""
    import torch
    from torch.utils.data import DataLoader

    from ..data.loading import ProductImageDataset, load_image_text_dataset
    from ..training.validation import to_uint8_nhwc

    data = load_image_text_dataset(dataset_name, dataset_config_name, train_data_dir, split=split,
                                   image_column=image_column, caption_column=caption_column, cache_dir=cache_dir,
                                   max_samples=max_samples)
    columns = [c for c in label_columns if c in data.column_names]
    vocabularies = {c: column_vocabulary(data, c) for c in columns}
    ds = ProductImageDataset(data, resolution, image_column, caption_column, extra_columns=columns)
    images, captions, labels = [], [], {c: [] for c in columns}

    def collate(items):
        return items

    state = random.getstate()
    try:
        random.seed(0)  # list-valued captions: the choice among them (python's random) is reproducible
        for items in DataLoader(ds, batch_size=batch_size, collate_fn=collate):
            images.append(to_uint8_nhwc(torch.stack([it["pixel_values"] for it in items])))
            captions += [it["text"] for it in items]
            for c in columns:
                labels[c] += as_label_names(data, c, [it[c] for it in items], vocabularies[c])
    finally:
        random.setstate(state)
    return LabeledSplit(np.concatenate(images), captions, labels, vocabularies)
