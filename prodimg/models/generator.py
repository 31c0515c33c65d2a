"""The text-conditioned denoising generator: ``G(x_t, t, z, text) -> x_0``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .embeddings import CrossAttention, group_count, timestep_embedding, upsample_conv


@dataclass
class ProductGeneratorOutput(BaseOutput):
    """
    Args:
        sample (`torch.Tensor` of shape `(batch, channels, height, width)`): the predicted ``x_0``
            in [-1, 1].
    """

    sample: torch.Tensor


class StyleResBlock(nn.Module):
    """Residual block whose normalisations are modulated (scale and shift) by the style vector."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, norm_groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(group_count(in_ch, norm_groups), in_ch, affine=False)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(group_count(out_ch, norm_groups), out_ch, affine=False)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.style1 = nn.Linear(style_dim, 2 * in_ch)
        self.style2 = nn.Linear(style_dim, 2 * out_ch)
        for lin in (self.style1, self.style2):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    @staticmethod
    def _modulate_silu(h: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """``silu(h * (1 + scale) + shift)``; without autograd, in place in ``h`` (a fresh norm output)."""
        scale, shift = params[:, :, None, None].chunk(2, dim=1)
        if torch.is_grad_enabled():
            return F.silu(h * (1 + scale) + shift)
        return F.silu(h.mul_(scale + 1).add_(shift), inplace=True)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self._modulate_silu(self.norm1(x), self.style1(style)))
        h = self.conv2(self._modulate_silu(self.norm2(h), self.style2(style)))
        return self.skip(x) + h


class ProductGenerator(ModelMixin, ConfigMixin):
    r"""A small UNet that predicts ``x_0`` from a noisy image ``x_t``.

    ``z`` (latent noise), the timestep and the pooled text embedding go through a mapping MLP to a
    style vector that modulates every residual block; the text token states (with their attention
    mask) feed cross-attention at the resolutions in ``attention_resolutions``.

    Args:
        sample_size: image resolution (a power of two, >= 8).
        in_channels / out_channels: image channels.
        block_out_channels: channels per resolution level; level ``i`` runs at ``sample_size / 2**i``.
        layers_per_block: residual blocks per level on the way down (``+1`` on the way up).
        attention_resolutions: resolutions (in pixels) that get cross-attention to text tokens.
        z_dim: size of the latent noise vector ``z``.
        text_embed_dim: width of the text encoder's token states.
        pooled_text_dim: width of the pooled text embedding.
        style_dim: width of the style vector.
        mapping_layers: depth of the mapping MLP.
        num_train_timesteps: number of timesteps the generator is conditioned on.
        num_attention_heads: heads in each cross-attention layer.
        norm_num_groups: maximum group count of the GroupNorms.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (32, 64, 128),
        layers_per_block: int = 1,
        attention_resolutions: tuple[int, ...] = (8,),
        z_dim: int = 64,
        text_embed_dim: int = 256,
        pooled_text_dim: int = 256,
        style_dim: int = 256,
        mapping_layers: int = 2,
        num_train_timesteps: int = 4,
        num_attention_heads: int = 4,
        norm_num_groups: int = 16,
    ):
        super().__init__()
        if sample_size < 8 or sample_size & (sample_size - 1):
            raise ValueError(f"sample_size must be a power of two >= 8, got {sample_size}")
        levels = len(block_out_channels)
        if levels < 1 or sample_size >> (levels - 1) < 4:
            raise ValueError(
                f"block_out_channels has {levels} levels; sample_size {sample_size} must stay >= 4 px at the last level"
            )
        if layers_per_block < 1:
            raise ValueError(f"layers_per_block must be >= 1, got {layers_per_block}")
        res_of_level = [sample_size >> i for i in range(levels)]
        unknown = [r for r in attention_resolutions if r not in res_of_level]
        if unknown:
            raise ValueError(f"attention_resolutions {unknown} are not among the UNet's resolutions {res_of_level}")

        # Mapping network: [z, pooled text, timestep embedding] -> style.
        self.time_embed_dim = style_dim
        mapping: list[nn.Module] = []
        in_dim = z_dim + pooled_text_dim + style_dim
        for i in range(mapping_layers):
            mapping += [nn.Linear(in_dim if i == 0 else style_dim, style_dim), nn.SiLU()]
        self.mapping = nn.Sequential(*mapping)
        self.pooled_norm = nn.LayerNorm(pooled_text_dim)
        self.text_norm = nn.LayerNorm(text_embed_dim)

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)

        def attn(ch: int, res: int) -> nn.Module:
            if res in attention_resolutions:
                return CrossAttention(ch, text_embed_dim, num_attention_heads, norm_num_groups)
            return nn.Identity()

        self.down_blocks = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        skip_channels = [block_out_channels[0]]
        ch = block_out_channels[0]
        for i, out_ch in enumerate(block_out_channels):
            for _ in range(layers_per_block):
                self.down_blocks.append(StyleResBlock(ch, out_ch, style_dim, norm_num_groups))
                self.down_attn.append(attn(out_ch, res_of_level[i]))
                ch = out_ch
                skip_channels.append(ch)
            if i < levels - 1:
                self.downsamplers.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_channels.append(ch)

        self.mid_block1 = StyleResBlock(ch, ch, style_dim, norm_num_groups)
        self.mid_attn = CrossAttention(ch, text_embed_dim, num_attention_heads, norm_num_groups)
        self.mid_block2 = StyleResBlock(ch, ch, style_dim, norm_num_groups)

        self.up_blocks = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i in reversed(range(levels)):
            out_ch = block_out_channels[i]
            for _ in range(layers_per_block + 1):
                self.up_blocks.append(StyleResBlock(ch + skip_channels.pop(), out_ch, style_dim, norm_num_groups))
                self.up_attn.append(attn(out_ch, res_of_level[i]))
                ch = out_ch
            if i > 0:
                self.upsamplers.append(nn.Conv2d(ch, ch, 3, padding=1))

        self.norm_out = nn.GroupNorm(group_count(ch, norm_num_groups), ch)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        z: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_text_embeds: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> ProductGeneratorOutput | tuple:
        """
        Args:
            sample: noisy images ``x_{t+1}``, (B, C, H, W).
            timestep: timestep ``t`` (int or (B,) long tensor) in ``0..num_train_timesteps-1``.
            z: latent noise, (B, z_dim).
            encoder_hidden_states: text token states, (B, L, text_embed_dim).
            pooled_text_embeds: pooled text embedding, (B, pooled_text_dim).
            encoder_attention_mask: (B, L), 1 for real tokens, 0 for padding.
        """
        b = sample.shape[0]
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], device=sample.device)
        timestep = timestep.to(sample.device).reshape(-1).expand(b) if timestep.numel() == 1 else timestep
        dtype = self.conv_in.weight.dtype
        t_emb = timestep_embedding(timestep, self.time_embed_dim).to(dtype)
        style = self.mapping(torch.cat([z.to(dtype), self.pooled_norm(pooled_text_embeds.to(dtype)), t_emb], dim=1))
        context = self.text_norm(encoder_hidden_states.to(dtype))
        mask = encoder_attention_mask

        h = self.conv_in(sample.to(dtype))
        skips = [h]
        lpb = self.config.layers_per_block
        for i in range(len(self.config.block_out_channels)):
            for j in range(lpb):
                k = i * lpb + j
                h = self.down_blocks[k](h, style)
                h = self._attend(self.down_attn[k], h, context, mask)
                skips.append(h)
            if i < len(self.downsamplers):
                h = self.downsamplers[i](h)
                skips.append(h)

        h = self.mid_block1(h, style)
        h = self.mid_attn(h, context, mask)
        h = self.mid_block2(h, style)

        k = 0
        for i in range(len(self.config.block_out_channels)):
            for _ in range(lpb + 1):
                h = self.up_blocks[k](torch.cat([h, skips.pop()], dim=1), style)
                h = self._attend(self.up_attn[k], h, context, mask)
                k += 1
            if i < len(self.upsamplers):
                h = upsample_conv(h, self.upsamplers[i])

        out = torch.tanh(self.conv_out(F.silu(self.norm_out(h))))
        if not return_dict:
            return (out,)
        return ProductGeneratorOutput(sample=out)

    @staticmethod
    def _attend(block: nn.Module, h: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if isinstance(block, CrossAttention):
            return block(h, context, mask)
        return h
