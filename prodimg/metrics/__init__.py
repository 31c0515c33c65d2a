"""Evaluation metrics: one module per metric, behind a small registry.

Every metric is a class with one method, ``compute(ctx: EvalContext) -> dict[str, float]``.
Hyperparameters (KID subset sizes, the k of precision/recall, ...) go to the constructor;
the data and the judge models go into the :class:`EvalContext`, which every metric of one
evaluation run shares, so that features computed once (Inception features of the generated and
the real images) are reused by FID, KID and precision/recall::

    from prodimg.metrics import EvalContext, get_metric, list_metrics

    ctx = EvalContext(generated_images=fake_uint8_nhwc, real_images=real_uint8_nhwc,
                      prompts=prompts, attributes={"color": colors, "subset": subsets})
    results = {}
    for name in ["fid", "kid", "precision_recall"]:
        results.update(get_metric(name).compute(ctx))
    json.dumps(results)  # plain floats, JSON-serialisable

Registered names: ``fid``, ``kid``, ``precision_recall``, ``clip_score``, ``color_accuracy``,
``category_accuracy``, ``diversity`` (see :func:`list_metrics`). A new metric is a class decorated with
``@register_metric("name")`` in its own module, imported at the bottom of this file.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TypeVar

from .context import EvalContext, RealStatsKey

__all__ = [
    "EvalContext",
    "Metric",
    "RealStatsKey",
    "get_metric",
    "list_metrics",
    "register_metric",
]


class Metric(abc.ABC):
    """Base class of every metric. ``name`` is set by :func:`register_metric`."""

    name: str = ""

    @abc.abstractmethod
    def compute(self, ctx: EvalContext) -> dict[str, float]:
        """Return the metric's values as a flat ``{key: float}`` dict (JSON-serialisable)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


_REGISTRY: dict[str, type[Metric]] = {}

M = TypeVar("M", bound=type[Metric])


def register_metric(name: str) -> Callable[[M], M]:
    """Class decorator: register a :class:`Metric` subclass under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string, got {name!r}")

    def decorator(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, Metric)):
            raise TypeError(f"@register_metric({name!r}) expects a subclass of Metric, got {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(
                f"a metric named {name!r} is already registered ({_REGISTRY[name].__qualname__})"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def get_metric(name: str, **kwargs) -> Metric:
    """Instantiate the metric registered as ``name``; ``kwargs`` go to its constructor."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown metric {name!r}; registered metrics: {', '.join(list_metrics())}"
        ) from None
    return cls(**kwargs)


def list_metrics() -> list[str]:
    """Names of all registered metrics, sorted."""
    return sorted(_REGISTRY)


# Importing the metric modules registers them.
from . import attributes, clip_score, diversity, fid, precision_recall  # noqa: F401
