"""Gated cross-attention (Flamingo §2.2) and the one function that decides which image each token sees.

Axis letters: b batch (of prompts), e expansion (beams / returned sequences / continuations per prompt),
s text length, t image slot, l latents, d width, h heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flamingo.model.config import CrossAttnConfig
from flamingo.model.perceiver import FeedForward


def media_positions(
    input_ids: torch.Tensor, image_token_id: int, offset: torch.Tensor | None = None
) -> torch.Tensor:
    """For each token, the 1-based index of the last ``<image>`` at or before it (0: none yet).

    input_ids (b, s) long; offset (b,) counts ``<image>`` tokens that came before ``input_ids`` (cached prefix).
    Returns (b, s) long.
    """
    positions = (input_ids == image_token_id).cumsum(dim=1)
    if offset is not None:
        positions = positions + offset[:, None]
    return positions


def media_mask(positions: torch.Tensor, num_slots: int, num_latents: int, policy: str) -> torch.Tensor:
    """Which media keys each token may attend to.

    positions (b, q) from :func:`media_positions`; returns bool (b, 1, q, t*l). Tokens that see no image get an
    all-True row (so softmax stays finite); their output is zeroed by the caller.
    """
    key_image = torch.arange(1, num_slots + 1, device=positions.device).repeat_interleave(
        num_latents
    )  # (t*l,)
    pos = positions[..., None]  # (b, q, 1)
    allowed = key_image == pos if policy == "previous" else key_image <= pos
    allowed = allowed | (pos == 0)
    return allowed[:, None]


class MaskedCrossAttention(nn.Module):
    """Text queries attend to the resampled latents of the images they may see."""

    def __init__(self, dim: int, dim_media: int, config: CrossAttnConfig) -> None:
        super().__init__()
        self.heads = config.heads
        inner = config.heads * config.dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_media, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def media_kv(self, media: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """media (b, t, l, d_media) -> keys and values, each (b, h, t*l, dh)."""
        k, v = self.to_kv(media.flatten(1, 2)).chunk(2, dim=-1)
        return tuple(z.unflatten(-1, (self.heads, -1)).transpose(1, 2) for z in (k, v))

    def forward(
        self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor
    ) -> torch.Tensor:
        """x (b, q, d) with q = e*s; kv from :meth:`media_kv`; mask (b, 1, q, t*l) -> (b, q, d)."""
        q = self.to_q(self.norm(x)).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (b, h, q, dh)
        k, v = kv
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask)
        return self.to_out(out.transpose(1, 2).flatten(2))


class GatedCrossAttentionBlock(nn.Module):
    """x + tanh(attn_gate) * xattn(x, media) then x + tanh(ff_gate) * ff(x)."""

    def __init__(self, dim: int, dim_media: int, config: CrossAttnConfig) -> None:
        super().__init__()
        self.policy = config.media_policy
        self.attn = MaskedCrossAttention(dim, dim_media, config)
        self.attn_gate = nn.Parameter(torch.full((1,), float(config.gate_init)))
        self.ff = FeedForward(dim, config.ff_mult)
        self.ff_gate = nn.Parameter(torch.full((1,), float(config.gate_init)))

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None,
        media: torch.Tensor | None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """x (b*e, s, d); positions (b*e, s); media (b, t, l, d_media) or None (text only).

        ``kv`` are this block's keys/values of ``media`` from an earlier call (generation); when None they are
        computed here. Returns the new x and the keys/values used. Rows ``r*e .. r*e+e-1`` of ``x`` share the
        media of prompt ``r``: their queries are folded into one attention call against that prompt's keys, so
        beams and scored continuations never copy the media.
        """
        if media is not None and positions is not None:
            batch, slots, latents = media.shape[:3]
            if kv is None:
                kv = self.attn.media_kv(media)
            folded = x.reshape(batch, -1, x.shape[-1])  # (b, e*s, d)
            pos = positions.reshape(batch, -1)  # (b, e*s)
            mask = media_mask(pos, slots, latents, self.policy)
            attended = self.attn(folded, kv, mask) * (pos > 0)[..., None].to(x.dtype)
            x = x + self.attn_gate.tanh().to(x.dtype) * attended.reshape(x.shape)
        return x + self.ff_gate.tanh().to(x.dtype) * self.ff(x), kv
