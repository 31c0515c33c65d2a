"""Data for prodimg: the fashion catalog dataset, loading any captioned image dataset, the
prompt-embedding cache and colour measurement.

Names are imported lazily, so ``import prodimg.data`` (or ``prodimg.data.colors``) stays light;
``datasets`` and ``torch`` load on first use of the names that need them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    # palette
    "BASIC_COLORS": "colors",
    "COLOR_NAMES": "colors",
    # the fashion catalog
    "build_fashion_catalog": "catalog",
    "export_parquet": "catalog",
    "push_catalog_to_hub": "catalog",
    "write_contact_sheet": "catalog",
    "HELD_OUT_PAIRS": "catalog",
    "SPLITS": "catalog",
    "CATEGORY_NAMES": "captions",
    "PATTERN_NAMES": "render",
    "make_caption": "captions",
    # loading any captioned image dataset
    "load_image_text_dataset": "loading",
    "validate_image_text_dataset": "loading",
    "ProductImageDataset": "loading",
    "ImageTransform": "loading",
    "BadDataError": "loading",
    "ValidationReport": "loading",
    "to_rgb": "loading",
    # prompt-embedding cache
    "PromptEmbeddingCache": "embedding_cache",
    "PromptEmbeddings": "embedding_cache",
    # colour measurement
    "measure_color": "color_measure",
    "measure_colors": "color_measure",
}

__all__ = [
    "BASIC_COLORS",
    "CATEGORY_NAMES",
    "COLOR_NAMES",
    "HELD_OUT_PAIRS",
    "PATTERN_NAMES",
    "SPLITS",
    "BadDataError",
    "ImageTransform",
    "ProductImageDataset",
    "PromptEmbeddingCache",
    "PromptEmbeddings",
    "ValidationReport",
    "build_fashion_catalog",
    "export_parquet",
    "load_image_text_dataset",
    "make_caption",
    "measure_color",
    "measure_colors",
    "push_catalog_to_hub",
    "to_rgb",
    "validate_image_text_dataset",
    "write_contact_sheet",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prodimg.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from .captions import CATEGORY_NAMES, make_caption
    from .catalog import (
        HELD_OUT_PAIRS,
        SPLITS,
        build_fashion_catalog,
        export_parquet,
        push_catalog_to_hub,
        write_contact_sheet,
    )
    from .color_measure import measure_color, measure_colors
    from .colors import BASIC_COLORS, COLOR_NAMES
    from .embedding_cache import PromptEmbeddingCache, PromptEmbeddings
    from .loading import (
        BadDataError,
        ImageTransform,
        ProductImageDataset,
        ValidationReport,
        load_image_text_dataset,
        to_rgb,
        validate_image_text_dataset,
    )
    from .render import PATTERN_NAMES
