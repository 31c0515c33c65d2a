"""Attribute accuracy of generated products: did the image get the requested colour / category?

- ``color_accuracy``: ``prodimg.data.color_measure.measure_color(image) -> str`` (one of the 11
  basic colour names) against ``ctx.attributes["color"]`` (names, or ClassLabel ids in the order
  of ``prodimg.data.colors.COLOR_NAMES``).
- ``category_accuracy``: ``ctx.category_classifier(images) -> labels`` against
  ``ctx.attributes["category"]``; labels are compared as given, so the classifier must answer in
  the column's vocabulary.

Both report the overall accuracy and, when ``ctx.attributes`` has a ``"subset"`` column (e.g.
``"seen"`` / ``"heldout"`` colour-category pairs), one key per subset: ``color_accuracy/heldout``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import Metric, register_metric
from .context import EvalContext


def accuracy_by_subset(
    correct: Sequence[bool], subsets: Sequence[Any] | None, prefix: str
) -> dict[str, float]:
    correct = np.asarray(correct, dtype=bool)
    if correct.size == 0:
        raise ValueError(f"{prefix}: no images to score")
    results = {prefix: float(correct.mean())}
    if subsets is not None:
        subsets = np.asarray([str(s) for s in subsets])
        for name in sorted(set(subsets.tolist())):
            results[f"{prefix}/{name}"] = float(correct[subsets == name].mean())
    return results


def _requested_column(ctx: EvalContext, column: str, metric: str) -> list[Any]:
    if column not in ctx.attributes:
        raise ValueError(
            f"metric {metric!r} needs the attribute column {column!r} in `EvalContext.attributes`"
        )
    return list(ctx.attributes[column])


@register_metric("color_accuracy")
class ColorAccuracy(Metric):
    """Fraction of generated images whose measured colour is the requested one.

    ``measure_fn`` defaults to ``prodimg.data.color_measure.measure_color`` (imported on first use).
    """

    def __init__(
        self,
        measure_fn: Callable[[np.ndarray], str] | None = None,
        column: str = "color",
        subset_column: str = "subset",
    ):
        self.measure_fn = measure_fn
        self.column = column
        self.subset_column = subset_column

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        from prodimg.data.colors import COLOR_NAMES

        measure = self.measure_fn
        if measure is None:
            from prodimg.data.color_measure import measure_color as measure
        images = ctx.require("generated_images", self.name)
        requested = []
        for value in _requested_column(ctx, self.column, self.name):
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                if not 0 <= value < len(COLOR_NAMES):
                    raise ValueError(f"colour id {value} out of range for {len(COLOR_NAMES)} colours")
                value = COLOR_NAMES[value]
            if value not in COLOR_NAMES:
                raise ValueError(f"requested colour {value!r} is not one of {COLOR_NAMES}")
            requested.append(value)
        measured = [measure(image) for image in images]
        correct = [m == r for m, r in zip(measured, requested)]
        return accuracy_by_subset(correct, ctx.attributes.get(self.subset_column), "color_accuracy")


@register_metric("category_accuracy")
class CategoryAccuracy(Metric):
    """Fraction of generated images that ``ctx.category_classifier`` assigns to the requested category."""

    def __init__(self, column: str = "category", subset_column: str = "subset"):
        self.column = column
        self.subset_column = subset_column

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        classifier = ctx.require("category_classifier", self.name)
        images = ctx.require("generated_images", self.name)
        requested = _requested_column(ctx, self.column, self.name)
        predicted = predict_labels(classifier, images, ctx.batch_size)
        return self.score(predicted, requested, ctx.attributes.get(self.subset_column))

    @staticmethod
    def score(predicted: Sequence[Any], requested: Sequence[Any], subsets: Sequence[Any] | None = None
              ) -> dict[str, float]:
        """The metric's figures from labels already predicted (one per requested label)."""
        if len(predicted) != len(requested):
            raise ValueError(f"{len(predicted)} predicted labels for {len(requested)} requested ones")
        correct = [_label(p) == _label(r) for p, r in zip(predicted, requested)]
        return accuracy_by_subset(correct, subsets, "category_accuracy")


def _label(value: Any) -> Any:
    # numpy / torch scalars compare like the Python value they hold.
    return value.item() if hasattr(value, "item") else value


def predict_labels(classifier: Callable[[np.ndarray], Sequence[Any]], images: np.ndarray,
                   batch_size: int = 256) -> list[Any]:
    """``classifier`` over ``images`` in batches; one label per image, or a ValueError."""
    predicted: list[Any] = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        labels = list(classifier(batch))
        if len(labels) != len(batch):
            raise ValueError(f"`category_classifier` returned {len(labels)} labels for {len(batch)} images")
        predicted += [_label(v) for v in labels]
    return predicted


def accuracy_by_group(requested: Sequence[Any], groups: Sequence[Any],
                      predictions: dict[str, Sequence[Any]]) -> dict[str, dict[str, Any]]:
    """Accuracy within each value of another attribute, e.g. category accuracy per requested colour.

    ``predictions`` names one or more lists of answers for the same rows (``{"generated": ...,
    "real": ...}``). Returns ``{group: {"n": rows, name: fraction right, ...}}``, groups sorted by name.
    """
    for name, predicted in predictions.items():
        if len(predicted) != len(requested):
            raise ValueError(f"{len(predicted)} {name} predictions for {len(requested)} requested labels")
    if len(groups) != len(requested):
        raise ValueError(f"{len(groups)} group values for {len(requested)} requested labels")
    groups = np.asarray([str(_label(g)) for g in groups])
    correct = {name: np.asarray([_label(p) == _label(r) for p, r in zip(predicted, requested)], dtype=bool)
               for name, predicted in predictions.items()}
    out: dict[str, dict[str, Any]] = {}
    for group in sorted(set(groups.tolist())):
        rows = groups == group
        out[group] = {"n": int(rows.sum()), **{name: float(c[rows].mean()) for name, c in correct.items()}}
    return out


def per_class_accuracy(predicted: Sequence[Any], requested: Sequence[Any], names: Sequence[Any]) -> dict[str, Any]:
    """Where a classifier's answers go, class by class.

    Returns ``{"labels": names, "confusion": rows = requested class, columns = predicted class
    (counts), "accuracy": {name: fraction right, or None when the class was never requested},
    "most_confused_with": {name: [other name, fraction of that class's images]} }``.
    """
    names = [_label(n) for n in names]
    if len(predicted) != len(requested):
        raise ValueError(f"{len(predicted)} predictions for {len(requested)} requested labels")
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({str(_label(v)) for v in [*predicted, *requested]} - {str(n) for n in names})
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not among the classes {names}")
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    for p, r in zip(predicted, requested):
        confusion[index[_label(r)], index[_label(p)]] += 1
    accuracy: dict[str, float | None] = {}
    confused: dict[str, list] = {}
    for i, name in enumerate(names):
        total = int(confusion[i].sum())
        accuracy[str(name)] = float(confusion[i, i] / total) if total else None
        off = confusion[i].copy()
        off[i] = 0
        if total and off.max() > 0:
            j = int(off.argmax())
            confused[str(name)] = [names[j], float(off[j] / total)]
    return {"labels": names, "confusion": confusion.tolist(), "accuracy": accuracy, "most_confused_with": confused}
