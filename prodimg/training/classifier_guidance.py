"""Classifier guidance for the generator: a frozen attribute classifier's cross-entropy on its outputs.

StyleGAN-XL (Sauer et al., 2022) adds to the generator's adversarial loss the cross-entropy of a
frozen, separately trained classifier on each generated image against the class it was asked for;
AC-GAN (Odena et al., 2017) trains the same term with a classifier head in the discriminator. Here the
classifier is an :class:`~prodimg.evaluation.classifier.AttributeClassifier` (category and pattern heads,
``train_scripts/train_attribute_classifier.py``) and the classes come from the training data's label
columns of the same names: each training caption maps to the labels of its rows. A caption whose rows
disagree on a head, a caption outside the training split, and a row whose condition was dropped add
nothing to that head's term.

The term is the sum over heads of each head's weight (1 unless given, ``parse_heads``) times the mean
cross-entropy of the kept rows, taken on the generated image after a random translation (as CLIP guidance
does), with the classifier frozen in eval mode (BatchNorm's running statistics, no dropout). Per-head
weights matter because heads differ in scale: a pattern head that the generator barely satisfies
has a cross-entropy several times a category head's, and at equal weights swamps it.

It must not be the classifier that ``prodimg eval`` judges with (``prodimg/assets/attribute_classifier``):
that would optimise the measurement. Train another one (a different seed and architecture) and check a
guided generator with judges it never saw as well (FID's Inception features, a CLIP's zero-shot reading):
a generator can learn to please one classifier with features that others do not read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..evaluation.classifier import CLASSIFIER_DIR, load_attribute_classifier
from .augment import translate_on_white

logger = logging.getLogger(__name__)

IGNORE = -100


def parse_heads(spec: str) -> dict[str, float]:
    """``"category,pattern=0.2"`` -> ``{"category": 1.0, "pattern": 0.2}``: comma-separated head names, each
    with an optional ``=weight`` (> 0; 1 when left out). Raises ValueError naming what is wrong."""
    heads: dict[str, float] = {}
    for item in spec.split(","):
        name, sep, value = (part.strip() for part in item.partition("="))
        if not name:
            raise ValueError(f"classifier guidance heads {spec!r}: an empty head name")
        if name in heads:
            raise ValueError(f"classifier guidance heads {spec!r}: {name!r} given twice")
        try:
            weight = float(value) if sep else 1.0
        except ValueError:
            raise ValueError(
                f"classifier guidance heads {spec!r}: {name!r} has weight {value!r}, not a number"
            ) from None
        if not weight > 0 or weight == float("inf"):
            raise ValueError(f"classifier guidance heads {spec!r}: {name!r} needs a finite weight > 0")
        heads[name] = weight
    return heads


def format_heads(heads: Mapping[str, float]) -> str:
    """The inverse of :func:`parse_heads`, leaving out weights of 1."""
    return ",".join(name if w == 1 else f"{name}={w:g}" for name, w in heads.items())


class ClassifierGuidance:
    """A frozen attribute classifier as a differentiable loss on generated images, with a caption -> label
    table built from the training data.

    ``heads``: the heads to guide with, as names (weight 1 each) or a ``{name: weight}`` mapping (see
    :func:`parse_heads`); all of the classifier's heads at weight 1 when None.
    """

    def __init__(
        self,
        model,
        heads: Sequence[str] | Mapping[str, float] | None = None,
        device: torch.device | str = "cpu",
    ):
        available = list(model.head_names)
        if heads is None:
            heads = dict.fromkeys(available, 1.0)
        elif not isinstance(heads, Mapping):
            heads = dict.fromkeys(heads, 1.0)
        unknown = [h for h in heads if h not in available]
        if not heads or unknown:
            raise ValueError(
                f"classifier guidance heads must be some of this classifier's {available}, got {list(heads)}"
            )
        bad = {h: w for h, w in heads.items() if not 0 < w < float("inf")}
        if bad:
            raise ValueError(f"classifier guidance head weights must be finite and > 0, got {bad}")
        self.heads = list(heads)
        self.head_weights = {h: float(w) for h, w in heads.items()}
        self.model = model.to(device).eval().requires_grad_(False)
        self.last_head_losses: dict[str, torch.Tensor] = {}
        self._index: dict[str, int] = {}
        self._labels: torch.Tensor | None = None  # (num captions, num heads), IGNORE where unknown

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        heads: Sequence[str] | Mapping[str, float] | None = None,
        device: torch.device | str = "cpu",
    ) -> ClassifierGuidance:
        if Path(path).resolve() == CLASSIFIER_DIR.resolve():
            logger.warning(
                "classifier guidance from the classifier that `prodimg eval` judges with: its category and "
                "pattern figures will measure what the generator was optimised for, not what it draws"
            )
        return cls(load_attribute_classifier(path), heads, device)

    def build_labels(self, captions: Sequence[str], columns: dict[str, Sequence[str]]) -> dict[str, int]:
        """Map each caption to its rows' labels, per head, in this classifier's label indices.

        ``columns[head]`` is the rows' label names; ``captions`` are the rows' captions. Raises when a head
        has no column or the classifier does not know one of the column's names. Returns, per head, how
        many distinct captions were ambiguous.
        """
        missing = [h for h in self.heads if h not in columns]
        if missing:
            raise ValueError(
                "classifier guidance needs a label column for each head; "
                f"the training data has none for {missing}"
            )
        index = {t: i for i, t in enumerate(dict.fromkeys(captions))}
        table = torch.full((len(index), len(self.heads)), IGNORE, dtype=torch.long)
        ambiguous = {}
        for j, head in enumerate(self.heads):
            names = columns[head]
            known = {name: k for k, name in enumerate(self.model.label_names(head))}
            unknown = sorted(set(names) - set(known))
            if unknown:
                raise ValueError(f"the classifier's {head!r} head does not know the data's labels {unknown}")
            if len(names) != len(captions):
                raise ValueError(f"{head!r}: {len(names)} labels for {len(captions)} captions")
            rows = torch.tensor([index[t] for t in captions], dtype=torch.long)
            labels = torch.tensor([known[name] for name in names], dtype=torch.long)
            first = torch.full((len(index),), IGNORE, dtype=torch.long).scatter_reduce(
                0, rows, labels, reduce="amin", include_self=False
            )
            last = torch.full((len(index),), IGNORE, dtype=torch.long).scatter_reduce(
                0, rows, labels, reduce="amax", include_self=False
            )
            clash = first != last
            table[:, j] = torch.where(clash, IGNORE, first)
            ambiguous[head] = int(clash.sum())
        self._index, self._labels = index, table.to(self._device)
        return ambiguous

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def labels(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), num heads) label indices; ``IGNORE`` for captions outside the table."""
        if self._labels is None:
            raise RuntimeError("call build_labels() first")
        rows = [self._index.get(t, -1) for t in texts]
        out = torch.full((len(texts), len(self.heads)), IGNORE, dtype=torch.long, device=self._device)
        known = [i for i, r in enumerate(rows) if r >= 0]
        if known:
            out[known] = self._labels[[rows[i] for i in known]]
        return out

    def loss(
        self,
        images: torch.Tensor,
        texts: Sequence[str],
        keep: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sum over heads of the head's weight x the mean cross-entropy over the rows in ``keep`` (all when
        None) whose caption has a label; a head with no such row adds 0. ``images``: generator outputs in
        [-1, 1]. Each head's unweighted mean is left in :attr:`last_head_losses` (detached), for logging."""
        logits = self.model(translate_on_white(images.float(), generator)).logits
        labels = self.labels(texts)
        if keep is not None:
            labels = labels.masked_fill(~keep.to(labels.device, torch.bool).unsqueeze(1), IGNORE)
        total = images.new_zeros((), dtype=torch.float32)
        self.last_head_losses = {}
        for j, head in enumerate(self.heads):
            target = labels[:, j]
            counted = (target != IGNORE).sum()
            ce = F.cross_entropy(logits[head].float(), target, ignore_index=IGNORE, reduction="sum")
            mean = ce / counted.clamp(min=1)
            self.last_head_losses[head] = mean.detach()
            total = total + self.head_weights[head] * mean
        return total
