"""Perceiver Resampler (Flamingo §2.1): a variable number of patch tokens -> a fixed set of latents per image.

Axis letters: b batch, t image slot, f frame, n tokens per frame, l latents, d width, h heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flamingo.model.config import PerceiverConfig


class FeedForward(nn.Module):
    """LayerNorm -> Linear(mult x) -> exact GELU -> Linear, no biases on the linears."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mult, bias=False)
        self.fc2 = nn.Linear(dim * mult, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class PerceiverAttention(nn.Module):
    """Latents attend to [media tokens ; latents]; one projection makes keys and values (split in half)."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """media (N, m, d), latents (N, l, d) -> (N, l, d) update (no residual)."""
        media, latents = self.norm_media(media), self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (z.unflatten(-1, (self.heads, -1)).transpose(1, 2) for z in (q, k, v))  # (N, h, *, dh)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, h, l, dh)
        return self.to_out(out.transpose(1, 2).flatten(2))


class PerceiverLayer(nn.Module):
    def __init__(self, dim: int, config: PerceiverConfig) -> None:
        super().__init__()
        self.attn = PerceiverAttention(dim, config.heads, config.dim_head)
        self.ff = FeedForward(dim, config.ff_mult)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = latents + self.attn(media, latents)
        return latents + self.ff(latents)


class PerceiverResampler(nn.Module):
    """Resamples each image (all its frames together) to ``num_latents`` vectors of the media width."""

    def __init__(self, dim: int, config: PerceiverConfig) -> None:
        super().__init__()
        self.config = config
        self.latents = nn.Parameter(torch.randn(config.num_latents, dim))
        self.frame_embs = nn.Parameter(torch.randn(config.max_frames, dim)) if config.max_frames else None
        self.layers = nn.ModuleList(PerceiverLayer(dim, config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (N, f, n, d) -> latents (N, l, d); N is any flattening of (b, t)."""
        num, frames = features.shape[:2]
        if self.frame_embs is not None:
            if frames > self.frame_embs.shape[0]:
                raise ValueError(
                    f"got {frames} frames per image but perceiver.max_frames={self.frame_embs.shape[0]}; "
                    "raise max_frames in the model config"
                )
            features = features + self.frame_embs[:frames, None, :].to(features.dtype)
        media = features.flatten(1, 2)  # (N, f*n, d)
        latents = self.latents.to(media.dtype).expand(num, -1, -1)  # (N, l, d)
        for layer in self.layers:
            latents = layer(media, latents)
        return self.norm(latents)
