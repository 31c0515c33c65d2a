"""CLIP guidance for the generator: an image-text alignment term from a frozen CLIP's image tower.

StyleGAN-T (Sauer et al., 2023) adds to the generator's adversarial loss the spherical distance
between the CLIP embedding of each generated image and the CLIP embedding of its prompt; the
discriminator alone judges whether an image matches its text only through its (weak) projection
head. Here the term is ``1 - cos(image_embeds(G(...)), text_embeds(caption))``, averaged over the
rows whose condition was not dropped, with gradients flowing through the frozen image tower into
the generator.

The text side needs no second text encoder: the generator's pooled conditioning *is* CLIP's
``text_embeds`` (``CLIPTextModelWithProjection``) when the guidance CLIP is the model whose text
tower conditions the generator, which is how the default recipe trains (``train_clip.py`` output
-> pipeline text encoder). :meth:`CLIPGuidance.check_text_tower` verifies that on real captions
and refuses any other CLIP, since its image embeddings would live in a different space.

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
from .augment import diff_augment, parse_policy

logger = logging.getLogger(__name__)

#: Minimum cosine between the guidance CLIP's text embeddings and the generator's pooled conditioning.
TEXT_TOWER_MIN_COSINE = 0.99


class CLIPGuidance:
    """The frozen image tower of a CLIP (``transformers.CLIPModel``) as a differentiable alignment loss."""

    def __init__(self, judge, device: torch.device | str = "cpu"):
        model = judge.model
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
        self.translate = parse_policy("translation")

    @classmethod
    def from_pretrained(cls, path: str, device: torch.device | str = "cpu", **hub_kwargs) -> CLIPGuidance:
        from ..evaluation.clip import load_clip_judge

        return cls(load_clip_judge(path, device="cpu", **hub_kwargs), device)

    @torch.no_grad()
    def text_embeds(self, texts: Sequence[str]) -> torch.Tensor:
        """This CLIP's own ``text_embeds`` for ``texts`` (used only to check the generator's conditioning)."""
        device = self.text_projection.weight.device
        tokens = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(device)
        out = self.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return self.text_projection(out.pooler_output).float()

    def check_text_tower(self, texts: Sequence[str], pooled: torch.Tensor) -> float:
        """Raise ``ValueError`` unless ``pooled`` (the generator's conditioning for ``texts``) matches this
        CLIP's text embeddings (cosine >= :data:`TEXT_TOWER_MIN_COSINE` for every text); returns the
        smallest cosine."""
        if pooled.shape[-1] != self.projection_dim:
            raise ValueError(
                f"--clip_guidance_model {self.source!r} embeds into {self.projection_dim} dimensions but the "
                f"generator is conditioned on {pooled.shape[-1]}-d text embeddings: guidance needs the CLIP "
                "whose text tower is the pipeline's text encoder"
            )
        cos = F.cosine_similarity(
            self.text_embeds(texts), pooled.detach().float().to(self.text_projection.weight.device)
        )
        worst = float(cos.min())
        if worst < TEXT_TOWER_MIN_COSINE:
            raise ValueError(
                f"--clip_guidance_model {self.source!r} has a different text tower from the pipeline's "
                f"text encoder (cosine {worst:.3f} < {TEXT_TOWER_MIN_COSINE} on "
                f"{texts[int(cos.argmin())]!r}): guidance needs the CLIP whose text tower conditions the "
                "generator (the train_clip.py output the pipeline was built from)"
            )
        return worst

    def image_embeds(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """CLIP image embeddings of generator outputs in [-1, 1], (N, 3, H, W); differentiable."""
        # Translate around white (the catalogue's background) so the shifted-in border is background too.
        (shifted,) = diff_augment([images.float() - 1], self.translate, generator)
        x = clip_pixels((shifted / 2 + 1).clamp(0, 1), self.image_size, self.mean, self.std)
        out = self.vision_model(pixel_values=x)
        return self.visual_projection(out.pooler_output)

    def loss(
        self,
        images: torch.Tensor,
        text_embeds: torch.Tensor,
        keep: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``1 - cos(image, text)`` averaged over the rows in ``keep`` (all rows when None); 0 when none."""
        cos = F.cosine_similarity(self.image_embeds(images, generator).float(), text_embeds.float(), dim=-1)
        if keep is None:
            return (1 - cos).mean()
        keep = keep.to(cos.device, cos.dtype)
        return ((1 - cos) * keep).sum() / keep.sum().clamp(min=1)
