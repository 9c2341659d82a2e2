"""Gated cross-attention (Flamingo §2.2) and the one function that decides which image each token sees.

Axis letters: b batch (of prompts), e expansion (beams / returned sequences / continuations per prompt),
s text length, t image slot, l latents, d width, h heads, n segments, m length of the longest segment.

Four ways to run the same attention, chosen once per LM call (by :func:`plan_routing`, or by
:func:`fixed_image` for the decode steps of ``Flamingo.generate``):

- **dense**: every query against all ``t*l`` media keys with a boolean mask (:func:`media_mask`);
- **segmented** (policy ``previous`` only): the queries that see image j of row r form segment (r, j); the
  segments are padded to a common length and attend to their own image's ``l`` keys only, in one batched
  attention call. With 32 demonstration images this does 1/32 of the dense attention's work.
- **gathered** (policy ``previous``, for decode steps): each query gathers its own image's ``l`` keys and values
  by an index computed on the device, so a new token costs the same however many images the prompt holds, and
  nothing is read back to the host.
- **one image per prompt** (policy ``previous``, decode steps of ``Flamingo.generate``, where ``<image>`` can
  never be generated): every new token of prompt r sees the same image, its last one, for the whole call. Each
  block picks that image's keys and values once (:meth:`MaskedCrossAttention.select_image`) and every later step
  attends to them directly, all beams of a prompt in one query block (:class:`FixedImage`).
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class Segments:
    """Queries grouped by the image they see (policy ``previous``).

    ``media`` (n,) is segment k's row in the (b*t) flattened media (``row * t + 0-based slot``); ``index``
    (n, m) holds the flat query indices (into b*q) of its queries, padded with b*q (a dummy zero query);
    ``tokens`` (k,) are all queries that see an image and ``where`` (k,) their flat position in ``index``;
    ``latents`` is l. ``every_image``: segment k is image k, for all b*t images (``media`` is ``arange``), so the
    keys are a view of the blocks' keys and need no gather.
    """

    latents: int
    media: torch.Tensor
    index: torch.Tensor
    tokens: torch.Tensor
    where: torch.Tensor
    every_image: bool = False


@dataclass
class FixedImage:
    """Decode steps where every query of prompt r sees image ``slot[r]`` (policy ``previous``, no new ``<image>``).

    ``slot`` (b,) long, the 0-based image slot; ``seen`` (b, 1, 1) 0/1 in the activations' dtype, or None when
    every prompt has an image (then nothing is masked).
    """

    slot: torch.Tensor
    seen: torch.Tensor | None


def fixed_image(seen_images: torch.Tensor, dtype: torch.dtype) -> FixedImage:
    """The :class:`FixedImage` plan from the number of images each prompt has seen, (b,) long.

    Reads one flag back from the device (whether some prompt has no image): once per generation call.
    """
    seen = seen_images > 0
    all_seen = bool(seen.all())
    return FixedImage(
        slot=(seen_images - 1).clamp(min=0), seen=None if all_seen else seen.to(dtype)[:, None, None]
    )


@dataclass
class MediaRouting:
    """Which media keys each query of one LM call attends to, computed once and shared by every block.

    ``positions`` (b, q) media index of each (folded) query; exactly one of ``mask`` (b, 1, q, t*l),
    ``segments``, ``gather`` (b*q*l,): the flat key index, into (b*t*l), of every latent each query sees, and
    ``fixed`` (:class:`FixedImage`).
    """

    positions: torch.Tensor
    mask: torch.Tensor | None = None
    segments: Segments | None = None
    gather: torch.Tensor | None = None
    fixed: FixedImage | None = None


def plan_routing(
    positions: torch.Tensor,
    num_slots: int,
    num_latents: int,
    policy: str,
    segmented: bool | None = None,
    gather: bool = False,
) -> MediaRouting:
    """Choose dense, segmented or gathered attention for the folded ``positions`` (b, q) and precompute it.

    ``segmented=None`` picks the cheaper of the first two: segments when the policy is ``previous``, there are
    at least two image slots and the padded segments hold at most half the dense attention's query-key pairs.
    ``gather=True`` (policy ``previous`` only; meant for few queries per row, as in a decode step) gathers each
    query's own keys without reading anything back from the device.
    """
    if gather and policy == "previous":
        b, q = positions.shape
        slot = (positions - 1).clamp(min=0)  # queries that see no image take slot 0; their output is zeroed
        image = torch.arange(b, device=positions.device)[:, None] * num_slots + slot  # (b, q)
        keys = image.flatten()[:, None] * num_latents + torch.arange(num_latents, device=positions.device)
        return MediaRouting(positions, gather=keys.flatten())
    if policy != "previous" or (segmented is None and num_slots < 2) or segmented is False:
        return MediaRouting(positions, mask=media_mask(positions, num_slots, num_latents, policy))
    b, q = positions.shape
    segment_id = (positions + torch.arange(b, device=positions.device)[:, None] * (num_slots + 1)).flatten()
    tokens = (positions.flatten() > 0).nonzero().flatten()  # (k,) queries that see an image
    ids, order = segment_id[tokens].sort(stable=True)  # queries of one segment keep their order
    tokens = tokens[order]
    unique, counts = torch.unique_consecutive(ids, return_counts=True)  # (n,)
    longest = int(counts.max()) if counts.numel() else 0
    if segmented is None and unique.numel() * longest * 2 > b * q * num_slots:
        return MediaRouting(positions, mask=media_mask(positions, num_slots, num_latents, policy))
    starts = counts.cumsum(0) - counts
    rank = torch.arange(tokens.numel(), device=tokens.device) - starts.repeat_interleave(counts)
    segment = torch.arange(unique.numel(), device=tokens.device).repeat_interleave(counts)
    where = segment * longest + rank
    index = torch.full((unique.numel() * longest,), b * q, dtype=torch.long, device=tokens.device)
    index[where] = tokens
    segments = Segments(
        latents=num_latents,
        media=unique // (num_slots + 1) * num_slots + unique % (num_slots + 1) - 1,
        index=index.view(unique.numel(), longest),
        tokens=tokens,
        where=where,
        # distinct sorted ids, one per image, can only be every image in order
        every_image=unique.numel() == b * num_slots,
    )
    return MediaRouting(positions, segments=segments)


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
        self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], routing: MediaRouting
    ) -> torch.Tensor:
        """x (b, q, d) with q = e*s; kv from :meth:`media_kv`; routing for these queries -> (b, q, d).

        Queries that see no image get exactly zero.
        """
        k, v = kv
        if routing.segments is not None:
            return self.to_out(self._segmented(x, k, v, routing.segments))
        if routing.gather is not None:
            out = self._gathered(x, k, v, routing.gather)  # (b, q, h*dh)
        else:
            q = self.to_q(self.norm(x)).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (b, h, q, dh)
            out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=routing.mask)
            out = out.transpose(1, 2).flatten(2)
        seen = (routing.positions > 0)[..., None].to(x.dtype)  # (b, q, 1)
        return self.to_out(out) * seen

    @staticmethod
    def select_image(
        kv: tuple[torch.Tensor, torch.Tensor], slot: torch.Tensor, latents: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """kv from :meth:`media_kv`, each (b, h, t*l, dh); slot (b,) -> image ``slot[r]``'s keys and values of
        each row r, each (b, h, l, dh) and contiguous."""
        rows = torch.arange(slot.shape[0], device=slot.device)
        # (b, h, t, l, dh)[rows, :, slot]: the two index dims are split by a slice, so theirs goes first
        return tuple(z.unflatten(2, (-1, latents))[rows, :, slot].contiguous() for z in kv)

    def attend_one_image(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x (b, q, d); kv from :meth:`select_image`, each (b, h, l, dh) -> (b, q, d): every query of row r
        attends to row r's image only."""
        k, v = kv
        b, q, _ = x.shape
        h, dh = k.shape[1], k.shape[-1]
        queries = self.to_q(self.norm(x)).view(b, q, h, dh).transpose(1, 2)  # (b, h, q, dh)
        out = F.scaled_dot_product_attention(queries, k.to(queries.dtype), v.to(queries.dtype))
        return self.to_out(out.transpose(1, 2).reshape(b, q, h * dh))

    def _segmented(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg: Segments) -> torch.Tensor:
        """x (b, q, d); k, v (b, h, t*l, dh) -> attention output (b, q, h*dh), zero where no image is seen."""
        b, q, _ = x.shape
        h, dh = k.shape[1], k.shape[-1]
        if seg.index.numel() == 0:
            return x.new_zeros(b, q, h * dh)
        # Gathers and scatters are index_select / index_copy: their backward passes are a plain scatter-add and
        # a gather, where advanced indexing's backward sorts the indices (a sixth of a GPU training step).
        n, m = seg.index.shape
        flat = self.to_q(self.norm(x)).flatten(0, 1)  # (b*q, h*dh)
        flat = torch.cat([flat, flat.new_zeros(1, h * dh)])  # row b*q: the padding query
        queries = flat.index_select(0, seg.index.flatten()).view(n, m, h, dh).transpose(1, 2)  # (n, h, m, dh)
        if seg.every_image:
            keys, values = (z.unflatten(2, (-1, seg.latents)).transpose(1, 2).flatten(0, 1) for z in (k, v))
        elif torch.is_grad_enabled():
            keys, values = (
                z.unflatten(2, (-1, seg.latents)).transpose(1, 2).flatten(0, 1).index_select(0, seg.media)
                for z in (k, v)
            )  # each (n, h, l, dh)
        else:  # no graph (generation, evaluation): index to_kv's output in place, copying only what is picked
            keys, values = (
                z.transpose(1, 2).unflatten(1, (-1, seg.latents)).flatten(0, 1)[seg.media].transpose(1, 2)
                for z in (k, v)
            )
        out = F.scaled_dot_product_attention(queries, keys.to(queries.dtype), values.to(queries.dtype))
        out = out.transpose(1, 2).flatten(0, 1).flatten(1)  # (n*m, h*dh)
        result = out.new_zeros(b * q, h * dh).index_copy(0, seg.tokens, out.index_select(0, seg.where))
        return result.view(b, q, h * dh)

    def _gathered(
        self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        """x (b, q, d); k, v (b, h, t*l, dh); index (b*q*l,) from :func:`plan_routing` -> (b, q, h*dh)."""
        b, q, _ = x.shape
        h, dh = k.shape[1], k.shape[-1]
        queries = self.to_q(self.norm(x)).view(b * q, 1, h, dh).transpose(1, 2)  # (b*q, h, 1, dh)
        # (b*t*l, h, dh) is a view of to_kv's output and indexing reads it in place, so only the selected keys
        # are copied (index_select would first copy the whole strided tensor). Decoding builds no graph.
        keys, values = (
            z.transpose(1, 2).flatten(0, 1)[index].view(b * q, -1, h, dh).transpose(1, 2) for z in (k, v)
        )  # each (b*q, h, l, dh)
        out = F.scaled_dot_product_attention(queries, keys.to(queries.dtype), values.to(queries.dtype))
        return out.view(b, q, h * dh)


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
        positions: torch.Tensor | MediaRouting | None,
        media: torch.Tensor | None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """x (b*e, s, d); positions (b*e, s), or their :class:`MediaRouting` folded to (b, e*s) (shared by every
        block of one LM call); media (b, t, l, d_media) or None (text only).

        ``kv`` are this block's keys/values of ``media`` from an earlier call (generation); when None they are
        computed here. Returns the new x and the keys/values used. Rows ``r*e .. r*e+e-1`` of ``x`` share the
        media of prompt ``r``: their queries are folded into one attention call against that prompt's keys, so
        beams and scored continuations never copy the media.

        Under a :class:`FixedImage` plan the keys/values used are each row's one image, (b, h, l, dh) each: they
        are returned, and may be given back as ``kv`` at the next step (nothing is picked again).
        """
        if media is not None and positions is not None:
            batch, slots, latents = media.shape[:3]
            if kv is None:
                kv = self.attn.media_kv(media)
            folded = x.reshape(batch, -1, x.shape[-1])  # (b, e*s, d)
            if not isinstance(positions, MediaRouting):
                positions = plan_routing(positions.reshape(batch, -1), slots, latents, self.policy)
            plan = positions.fixed
            if plan is not None:
                # Given all t*l keys, pick each row's image (with t = 1 the two are the same thing).
                if kv[0].shape[2] != latents:
                    kv = self.attn.select_image(kv, plan.slot, latents)
                attended = self.attn.attend_one_image(folded, kv)  # (b, e*s, d)
                if plan.seen is not None:
                    attended = attended * plan.seen.to(x.dtype)
            else:
                attended = self.attn(folded, kv, positions)
            x = x + self.attn_gate.tanh().to(x.dtype) * attended.reshape(x.shape)
        return x + self.ff_gate.tanh().to(x.dtype) * self.ff(x), kv
