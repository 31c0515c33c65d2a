"""Building blocks shared by the generator and the discriminator."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 100.0) -> torch.Tensor:
    """Sinusoidal embedding of (few) integer timesteps, shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=timesteps.device, dtype=torch.float32) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def group_count(channels: int, max_groups: int) -> int:
    """Largest divisor of ``channels`` that is <= ``max_groups``."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


class CrossAttention(nn.Module):
    """Multi-head attention from image positions to text tokens, with a key padding mask."""

    def __init__(self, channels: int, context_dim: int, num_heads: int, norm_groups: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_attention_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(group_count(channels, norm_groups), channels)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(context_dim, channels, bias=False)
        self.to_v = nn.Linear(context_dim, channels, bias=False)
        self.to_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.to_q(self.norm(x).flatten(2).transpose(1, 2))  # (B, HW, C)
        k, v = self.to_k(context), self.to_v(context)  # (B, L, C)
        heads = self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, heads, c // heads).transpose(1, 2)

        attn_mask = None
        if context_mask is not None:
            attn_mask = context_mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(b, h * w, c)
        return x + self.to_out(out).transpose(1, 2).view(b, c, h, w)
