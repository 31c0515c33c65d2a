"""The text-conditioned pair discriminator: ``D(x_t, x_{t+1}, t, text)``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .embeddings import timestep_embedding


@dataclass
class ProductDiscriminatorOutput(BaseOutput):
    """
    Args:
        logits (`torch.Tensor` of shape `(batch,)`): conditional realness logits
            (unconditional term + text projection term).
        unconditional_logits (`torch.Tensor` of shape `(batch,)`): the text-independent term.
        features (`torch.Tensor` of shape `(batch, feature_dim)`): pooled image-pair features, to
            score the same images against other captions with ``text_logits`` (matching-aware loss)
            without a second forward pass.
    """

    logits: torch.Tensor
    unconditional_logits: torch.Tensor
    features: torch.Tensor


class DownResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, downsample: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(temb_dim, out_ch)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.downsample = downsample

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(x, 0.2))
        h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(F.leaky_relu(h, 0.2))
        skip = self.skip(x)
        if self.downsample:
            h, skip = F.avg_pool2d(h, 2), F.avg_pool2d(skip, 2)
        return (h + skip) / 2**0.5


class ProductDiscriminator(ModelMixin, ConfigMixin):
    r"""Judges a denoising pair ``(x_t, x_{t+1})`` at timestep ``t`` given a caption.

    The pair is concatenated on channels and reduced by residual blocks to a feature vector ``h``;
    the output is ``w^T h + <h, P(text)>`` (projection conditioning, Miyato & Koyama 2018), where
    ``P`` is a learned projection of the pooled text embedding.

    Args:
        sample_size: resolution of the images (power of two >= 8).
        in_channels: channels of one image (the pair has twice as many).
        block_out_channels: channels of the residual blocks; all but the last downsample by 2.
        pooled_text_dim: width of the pooled text embedding.
        num_train_timesteps: number of timesteps.
        temb_dim: width of the timestep embedding.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        block_out_channels: tuple[int, ...] = (64, 128, 256, 256),
        pooled_text_dim: int = 256,
        num_train_timesteps: int = 4,
        temb_dim: int = 128,
    ):
        super().__init__()
        if sample_size < 8 or sample_size & (sample_size - 1):
            raise ValueError(f"sample_size must be a power of two >= 8, got {sample_size}")
        n_down = len(block_out_channels) - 1
        if n_down < 1 or sample_size >> n_down < 2:
            raise ValueError(
                f"block_out_channels has {len(block_out_channels)} blocks; sample_size {sample_size} "
                "must stay >= 2 px after downsampling"
            )
        self.temb_mlp = nn.Sequential(nn.Linear(temb_dim, temb_dim), nn.LeakyReLU(0.2), nn.Linear(temb_dim, temb_dim))
        self.conv_in = nn.Conv2d(2 * in_channels, block_out_channels[0], 3, padding=1)
        blocks = []
        ch = block_out_channels[0]
        for i, out_ch in enumerate(block_out_channels):
            blocks.append(DownResBlock(ch, out_ch, temb_dim, downsample=i < n_down))
            ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.feature_dim = ch
        self.out = nn.Linear(ch, 1)
        self.text_proj = nn.Linear(pooled_text_dim, ch)

    def forward(
        self,
        sample: torch.Tensor,
        noisy_sample: torch.Tensor,
        timestep: torch.Tensor | int,
        pooled_text_embeds: torch.Tensor,
        return_dict: bool = True,
    ) -> ProductDiscriminatorOutput | tuple:
        """
        Args:
            sample: the less noisy image ``x_t`` (real, or sampled from the generator's posterior).
            noisy_sample: the noisier image ``x_{t+1}`` it was denoised from.
            timestep: ``t`` (int or (B,) long tensor).
            pooled_text_embeds: (B, pooled_text_dim).
        """
        b = sample.shape[0]
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], device=sample.device)
        timestep = timestep.to(sample.device).reshape(-1).expand(b) if timestep.numel() == 1 else timestep
        dtype = self.conv_in.weight.dtype
        temb = self.temb_mlp(timestep_embedding(timestep, self.config.temb_dim).to(dtype))
        h = self.conv_in(torch.cat([sample, noisy_sample], dim=1).to(dtype))
        for block in self.blocks:
            h = block(h, temb)
        features = F.leaky_relu(h, 0.2).sum(dim=(2, 3))
        unconditional = self.out(features).squeeze(1)
        logits = unconditional + self.text_logits(features, pooled_text_embeds)
        if not return_dict:
            return (logits, unconditional, features)
        return ProductDiscriminatorOutput(logits=logits, unconditional_logits=unconditional, features=features)

    def text_logits(self, features: torch.Tensor, pooled_text_embeds: torch.Tensor) -> torch.Tensor:
        """The projection term ``<h, P(text)>`` for features ``h`` and any captions' embeddings."""
        return (features * self.text_proj(pooled_text_embeds.to(features.dtype))).sum(dim=1)
