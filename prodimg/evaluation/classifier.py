"""The attribute classifier: a small CNN that tells a product photo's category and pattern.

It judges generated images in ``prodimg eval`` (``category_accuracy``, ``pattern_accuracy``): a
diffusers ``ModelMixin``/``ConfigMixin`` whose config carries the label vocabularies, so its
answers are names ("dress", "striped") in the dataset's ClassLabel vocabulary. Weights ship in
``prodimg/assets/attribute_classifier`` (safetensors + config.json + ``metrics.json`` with its own
test accuracy); ``train_scripts/train_attribute_classifier.py`` trains it (:func:`train_classifier`).

Training augmentations make it judge shape and pattern, not colour: random permutation of the RGB
channels and fading toward white (so a category is never recognised by a colour it happened to be
paired with: the held-out colour/category pairs of ``test_unseen_pairs`` stay fair), horizontal
flips and small translations. On the fashion catalogue the shipped judge also saw half of its
training rows rendered again in colours drawn from the whole palette (``recolor``, fed by
:class:`prodimg.data.catalog.CatalogRecolorer`): channel permutation cannot make a garment white, and
without recolouring the judge recognised 14 % of the real white coats (a held-out pair).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

logger = logging.getLogger(__name__)

CLASSIFIER_DIR = Path(__file__).resolve().parent.parent / "assets" / "attribute_classifier"
METRICS_FILE = "metrics.json"
HEADS = ("category", "pattern")


@dataclass
class AttributeClassifierOutput(BaseOutput):
    """``logits[head]``: (B, num_classes) per head (``"category"``, ``"pattern"``)."""

    logits: dict[str, torch.Tensor]


class AttributeClassifier(ModelMixin, ConfigMixin):
    """Conv (3x3) + BatchNorm + ReLU stages, each halving the resolution, then global average pooling
    and one linear head per attribute. Input: (B, 3, H, W) in [-1, 1]."""

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        block_out_channels: tuple[int, ...] = (32, 64, 128, 128),
        layers_per_block: int = 1,
        dropout: float = 0.1,
        category_names: tuple[str, ...] = (),
        pattern_names: tuple[str, ...] = (),
    ):
        super().__init__()
        if not category_names:
            raise ValueError("`category_names` must list the category labels")
        layers: list[nn.Module] = []
        c_in = 3
        for i, c_out in enumerate(block_out_channels):
            for j in range(layers_per_block):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
            if i < len(block_out_channels) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head_dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({"category": nn.Linear(c_in, len(category_names))})
        if pattern_names:
            self.heads["pattern"] = nn.Linear(c_in, len(pattern_names))

    def label_names(self, head: str) -> list[str]:
        return list(self.config[f"{head}_names"])

    @property
    def head_names(self) -> list[str]:
        return list(self.heads.keys())

    def forward(self, pixel_values: torch.Tensor, return_dict: bool = True):
        h = self.features(pixel_values)
        h = self.head_dropout(h.mean(dim=(2, 3)))
        logits = {name: head(h) for name, head in self.heads.items()}
        return AttributeClassifierOutput(logits=logits) if return_dict else (logits,)

    # ---------------------------------------------------------------------------------- inference
    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> (N, 3, S, S) in [-1, 1] (bilinear, antialiased resize to ``sample_size``)."""
        from ..metrics.inception import check_uint8_images

        check_uint8_images(images)
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        size = int(self.config.sample_size)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > size)
        return x

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 256) -> dict[str, list[str]]:
        """Label names per head for uint8 (N, H, W, 3) images."""
        was_training = self.training
        self.eval()
        out: dict[str, list[str]] = {h: [] for h in self.head_names}
        try:
            for start in range(0, len(images), batch_size):
                logits = self(self.preprocess(images[start : start + batch_size])).logits
                for head, value in logits.items():
                    names = self.label_names(head)
                    out[head] += [names[i] for i in value.argmax(dim=1).tolist()]
        finally:
            self.train(was_training)
        return out

    def head_classifier(self, head: str):
        """A callable ``uint8 images -> label names`` for one head (``EvalContext.category_classifier``)."""
        if head not in self.heads:
            raise ValueError(f"this classifier has no {head!r} head (heads: {self.head_names})")
        return lambda images: self.predict(images)[head]


def load_attribute_classifier(path: str | os.PathLike | None = None, device: str = "cpu") -> AttributeClassifier:
    """The shipped classifier (``prodimg/assets/attribute_classifier``) or one saved elsewhere."""
    path = Path(path) if path is not None else CLASSIFIER_DIR
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no attribute classifier in {path}; train one with train_scripts/train_attribute_classifier.py"
        )
    return AttributeClassifier.from_pretrained(str(path), use_safetensors=True).to(device).eval()


def classifier_metrics(path: str | os.PathLike | None = None) -> dict | None:
    """The test accuracies saved next to a classifier (``metrics.json``), if any."""
    file = Path(path if path is not None else CLASSIFIER_DIR) / METRICS_FILE
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None


# ---------------------------------------------------------------------------------- training
def augment(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2, fade_prob: float = 0.3) -> torch.Tensor:
    """Per image of a [-1, 1] batch: random RGB channel permutation, fading toward white (with probability
    ``fade_prob``: ``x -> 1 - (1 - x) * s``, ``s ~ U(0.15, 1)``, so light garments on the white backdrop
    are seen too), horizontal flip and integer translation (white fill)."""
    b, _, h, w = x.shape
    perms = torch.stack([torch.randperm(3, generator=generator) for _ in range(b)])
    x = torch.gather(x, 1, perms.view(b, 3, 1, 1).expand_as(x))
    if fade_prob > 0:
        s = 0.15 + 0.85 * torch.rand(b, generator=generator)
        s = torch.where(torch.rand(b, generator=generator) < fade_prob, s, torch.ones_like(s))
        x = 1.0 - (1.0 - x) * s.view(b, 1, 1, 1)
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    if max_shift:
        shift = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator).float()
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, 0, 2] = 2.0 * shift[:, 0] / w
        theta[:, 1, 2] = 2.0 * shift[:, 1] / h
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # Zero padding of (x - 1) is white (1.0) once shifted back.
        x = F.grid_sample(x - 1.0, grid, mode="nearest", padding_mode="zeros", align_corners=False) + 1.0
    return x


@torch.no_grad()
def evaluate_accuracy(model: AttributeClassifier, images: np.ndarray, labels: dict[str, Sequence[str]],
                      batch_size: int = 512) -> dict[str, float]:
    """Accuracy of each head against label names."""
    predicted = model.predict(images, batch_size)
    return {f"{head}_accuracy": float(np.mean([p == t for p, t in zip(predicted[head], labels[head])]))
            for head in model.head_names if head in labels}


def train_classifier(
    images: np.ndarray,
    labels: dict[str, Sequence[str]],
    label_names: dict[str, Sequence[str]],
    *,
    steps: int = 2000,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    weight_decay: float = 5e-4,
    seed: int = 0,
    heads: Sequence[str] = HEADS,
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128),
    layers_per_block: int = 1,
    log_every: int = 100,
    eval_fn=None,
    recolor=None,
    recolor_prob: float = 0.0,
) -> AttributeClassifier:
    """Train on uint8 (N, S, S, 3) images with label-name columns; AdamW + one-cycle LR, summed CE per head.

    ``eval_fn(model, step)`` (optional) is called every ``log_every`` steps. ``recolor(rows, rng)``
    (optional, e.g. a :class:`prodimg.data.catalog.CatalogRecolorer`) renders rows of ``images`` again
    in other colours with the same labels; each sampled row is replaced by such a rendering with
    probability ``recolor_prob``.
    """
    if not 0.0 <= recolor_prob <= 1.0:
        raise ValueError(f"recolor_prob must be in [0, 1], got {recolor_prob}")
    if recolor_prob > 0 and recolor is None:
        raise ValueError("recolor_prob > 0 needs a recolor function")
    torch.manual_seed(seed)
    heads = [h for h in heads if h in labels]
    if "category" not in heads:
        raise ValueError("the training data has no 'category' column")
    size = int(images.shape[1])
    model = AttributeClassifier(
        sample_size=size, block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        category_names=tuple(label_names["category"]),
        pattern_names=tuple(label_names["pattern"]) if "pattern" in heads else (),
    )
    targets = {}
    for h in heads:
        index = {n: i for i, n in enumerate(label_names[h])}
        targets[h] = torch.tensor([index[v] for v in labels[h]], dtype=torch.long)
    data = torch.from_numpy(np.ascontiguousarray(images))  # uint8 NHWC, converted per batch
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=learning_rate, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    recolor_rng = np.random.default_rng([seed, 1])
    n = len(data)
    order, pos = torch.randperm(n, generator=gen), 0
    model.train()
    started = time.perf_counter()
    running = 0.0
    for step in range(1, steps + 1):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        batch = data[idx]
        if recolor_prob > 0:
            pick = recolor_rng.random(len(idx)) < recolor_prob
            if pick.any():
                batch = batch.clone()
                batch[torch.from_numpy(pick)] = torch.from_numpy(recolor(idx.numpy()[pick], recolor_rng))
        x = batch.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        x = augment(x, gen)
        logits = model(x).logits
        loss = sum(F.cross_entropy(logits[h], targets[h][idx]) for h in heads)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += float(loss.detach())
        if step % log_every == 0 or step == steps:
            logger.info(f"step {step}/{steps}: loss {running / (log_every if step % log_every == 0 else step % log_every):.4f} "
                        f"({(time.perf_counter() - started) / step:.3f} s/step)")
            running = 0.0
            if eval_fn is not None:
                eval_fn(model, step)
                model.train()
    return model.eval()
