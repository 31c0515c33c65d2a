"""CLIP guidance for the generator: an image-text alignment term from a frozen CLIP's image tower.

StyleGAN-T (Sauer et al., 2023) adds to the generator's adversarial loss the spherical distance
between the CLIP embedding of each generated image and the CLIP embedding of its prompt; the
discriminator alone judges whether an image matches its text only through its (weak) projection
head. Here the term is ``1 - cos(image_embeds(G(...)), text_embeds(caption))``, averaged over the
rows whose condition was not dropped, with gradients flowing through the frozen image tower into
the generator.

The text side is the guidance CLIP's own text tower, not the generator's conditioning, so any
domain CLIP can guide any pipeline (StyleGAN-T likewise guides with a CLIP of its own): a stronger
CLIP raises what guidance can teach without replacing the pipeline's text encoder, which would cost
the trained generator its conditioning. :meth:`CLIPGuidance.precompute` encodes the training
captions once into one table on the training device (4 bytes per caption per projection dimension:
50 MB for the catalogue's 48,599 captions at 256); a step looks its captions up there, and captions
outside the table are encoded on the fly.

With ``objective="contrastive"`` the term is instead CLIP's own training loss, image to text: the
cross-entropy of each image's caption among the distinct captions of the global batch (all
processes'), at the CLIP's learned temperature. The cosine can be raised by what every caption
shares (a garment on white, its colour); the contrastive term only pays for what tells the image's
caption apart from the others in the batch, such as the category word of a garment whose colour is
already right.

Generated images are shifted by a random translation before the image tower (DiffAugment's
differentiable translation, filling with white, the catalogue's background), so the generator
cannot satisfy CLIP with a fixed per-pixel pattern (an adversarial example for the judge)
instead of the garment.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..metrics.clip_score import clip_pixels
from .augment import translate_on_white
from .losses import gather_batch

logger = logging.getLogger(__name__)


OBJECTIVES = ("cosine", "contrastive")


class CLIPGuidance:
    """The frozen image tower of a CLIP (``transformers.CLIPModel``) as a differentiable alignment loss."""

    def __init__(self, judge, device: torch.device | str = "cpu", objective: str = "cosine"):
        if objective not in OBJECTIVES:
            raise ValueError(f"CLIP guidance objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        self.objective = objective
        model = judge.model
        self.logit_scale = float(model.logit_scale.detach().exp())
        self.source = judge.source
        self.vision_model = model.vision_model.to(device).eval().requires_grad_(False)
        self.visual_projection = model.visual_projection.to(device).eval().requires_grad_(False)
        self.text_model = model.text_model.to(device).eval().requires_grad_(False)
        self.text_projection = model.text_projection.to(device).eval().requires_grad_(False)
        self.tokenizer = judge.tokenizer
        self.image_size = judge.image_size
        self.mean, self.std = list(judge.image_mean), list(judge.image_std)
        self.projection_dim = int(model.config.projection_dim)
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self.translate = True  # shift images before the tower (off only to compare with an unshifted reading)
        self._index: dict[str, int] = {}
        self._table: torch.Tensor | None = None

    @classmethod
    def from_pretrained(
        cls, path: str, device: torch.device | str = "cpu", objective: str = "cosine", **hub_kwargs
    ) -> CLIPGuidance:
        from ..evaluation.clip import load_clip_judge

        return cls(load_clip_judge(path, device="cpu", **hub_kwargs), device, objective)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 1024) -> torch.Tensor:
        """This CLIP's ``text_embeds`` for ``texts`` in float32, encoded now in batches.

        Batches are padded to their longest caption: CLIP's text tower is causal and pools at the end
        token, so right padding does not change a caption's embedding.
        """
        device = self.text_projection.weight.device
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding="longest",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(device)
            hidden = self.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            out.append(self.text_projection(hidden.pooler_output).float())
        return torch.cat(out) if out else torch.empty(0, self.projection_dim, device=device)

    def precompute(self, texts: Sequence[str]) -> int:
        """Encode the distinct ``texts`` not in the table yet and add them to it; returns how many."""
        new = [t for t in dict.fromkeys(texts) if t not in self._index]
        if new:
            rows = self.encode_texts(new)
            self._table = rows if self._table is None else torch.cat([self._table, rows])
            self._index.update({t: len(self._index) + i for i, t in enumerate(new)})
        return len(new)

    def text_embeds(self, texts: Sequence[str]) -> torch.Tensor:
        """This CLIP's ``text_embeds`` for ``texts`` (float32), from the table where :meth:`precompute`
        put them; captions outside it are encoded now (and not kept)."""
        if all(t in self._index for t in texts):
            index = torch.tensor([self._index[t] for t in texts], dtype=torch.long)
            return self._table.index_select(0, index.to(self._table.device))
        return self.encode_texts(texts)

    def image_embeds(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """CLIP image embeddings of generator outputs in [-1, 1], (N, 3, H, W); differentiable."""
        shifted = translate_on_white(images.float(), generator) if self.translate else images.float()
        x = clip_pixels(((shifted + 1) / 2).clamp(0, 1), self.image_size, self.mean, self.std)
        out = self.vision_model(pixel_values=x)
        return self.visual_projection(out.pooler_output)

    def loss(
        self,
        images: torch.Tensor,
        text_embeds: torch.Tensor,
        keep: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The guidance term averaged over the rows in ``keep`` (all rows when None); 0 when none.

        ``cosine``: ``1 - cos(image, text)``. ``contrastive``: ``-log softmax`` of the image's own caption
        among the distinct captions of the kept rows (identical captions, up to rounding, are one
        class) of the global batch (every process's, :func:`~prodimg.training.losses.gather_batch`),
        logits ``logit_scale * cos``; 0 when they hold fewer than two distinct captions.
        """
        image = self.image_embeds(images, generator).float()
        text = text_embeds.float()
        keep = torch.ones(len(image), device=image.device) if keep is None else keep.to(image.device, image.dtype)
        if self.objective == "cosine":
            per_row = 1 - F.cosine_similarity(image, text, dim=-1)
        else:
            # the candidates are the captions of every process's batch (frozen: no gradient to gather)
            rank, (all_text, all_keep) = gather_batch(text.detach(), keep)
            # One class per caption: rows whose embeddings agree up to rounding (a caption encoded twice,
            # even in one batch, can differ in the last bits) are one caption, its first row's.
            unit = F.normalize(all_text, dim=-1)
            first = (unit @ unit.T > 1 - 1e-5).to(torch.uint8).argmax(dim=1)
            reps, inverse = torch.unique(first, return_inverse=True)
            captions = all_text[reps]
            used = torch.unique(inverse[all_keep > 0])  # the kept rows' captions, as indices into `captions`
            if len(used) < 2:
                return image.sum() * 0
            classes = torch.full((len(captions),), -100, dtype=torch.long, device=image.device)
            classes[used] = torch.arange(len(used), device=image.device)
            logits = self.logit_scale * F.normalize(image, dim=-1) @ F.normalize(captions[used], dim=-1).T
            mine = inverse[rank * len(image) : (rank + 1) * len(image)]  # this process's rows
            # a dropped row's caption may be no class (-100, ignored): its row is weighted 0 below anyway
            per_row = F.cross_entropy(logits, classes[mine], reduction="none", ignore_index=-100)
        return (per_row * keep).sum() / keep.sum().clamp(min=1)
