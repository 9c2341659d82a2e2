"""Scoring continuations of one prompt (rank classification): the one implementation that the pipeline's
``class_scores`` and the evaluator's ``loglikelihood`` both call.

The prompt runs once with the KV cache on. Its last logits give every continuation's first token; the other
tokens come from one forward pass per chunk of continuations, each row starting from a copy of the prompt's
cache. The chunk's rows share the prompt's single media row (``Flamingo.forward`` rows ``r*e .. r*e+e-1``
share media row ``r``), so the images are never repeated. Continuations are sorted by length first, so a chunk
holds similar lengths (less padding).

The result equals scoring each continuation by running the whole prompt again in front of it, up to float
rounding (tests/model/test_scoring.py compares the two).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from flamingo.model.lm import cache_length, expand_cache

if TYPE_CHECKING:
    from flamingo.model.flamingo import Flamingo

REDUCTIONS = ("sum", "mean")


@torch.no_grad()
def score_continuations(
    model: Flamingo,
    input_ids: torch.Tensor,
    continuations: Sequence[Sequence[int]],
    media: torch.Tensor | None = None,
    chunk_size: int = 128,
    reduce: str = "sum",
) -> torch.Tensor:
    """Log-probability of each continuation's tokens after the prompt.

    Args:
        model: the model (eval mode).
        input_ids: (1, L) the prompt's ids, on the model's input device, no padding.
        continuations: c lists of token ids, each tokenized on its own and non-empty.
        media: (1, t, l, d_vis) the prompt's encoded images (``Flamingo.encode_media``), or None for text only.
        chunk_size: continuations per forward pass.
        reduce: ``sum`` of the tokens' log-probabilities, or their ``mean``.

    Returns:
        (c,) float32 on the CPU, in the order of ``continuations``.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, not {reduce!r}")
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be one prompt of shape (1, L), got {tuple(input_ids.shape)}")
    empty = [i for i, tokens in enumerate(continuations) if len(tokens) == 0]
    if empty:
        raise ValueError(f"continuation {empty[0]} has no tokens: every continuation needs at least one")
    device = input_ids.device
    out = model(input_ids=input_ids, media=media, use_cache=True)
    first = F.log_softmax(out.logits[0, -1].float(), dim=-1)  # (V,): predicts every first token
    # <image> tokens already in the cache, so the continuations' tokens see the prompt's last image.
    offset = (input_ids == model.config.tokens.image_id).sum(1)  # (1,)
    totals = torch.empty(len(continuations))
    order = sorted(range(len(continuations)), key=lambda i: len(continuations[i]))
    for start in range(0, len(order), chunk_size):
        chunk = order[start : start + chunk_size]
        scores = _score_chunk(
            model, [continuations[i] for i in chunk], first, out.past_key_values, media, offset, device
        )
        totals[chunk] = scores.float().cpu()
    if reduce == "mean":
        return totals / torch.tensor([len(t) for t in continuations], dtype=torch.float)
    return totals


def _score_chunk(
    model: Flamingo,
    tokens: Sequence[Sequence[int]],
    first: torch.Tensor,
    cache: object,
    media: torch.Tensor | None,
    offset: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """Summed log-probabilities (c,) of c continuations after the cached prompt."""
    ids, lengths = _pad_right(tokens, model.config.tokens.pad_id, device)  # (c, T), (c,)
    total = first[ids[:, 0]]  # (c,)
    if ids.shape[1] == 1:  # single-token continuations: the prompt's last logits say everything
        return total
    rows, prompt_len = ids.shape[0], cache_length(cache)
    inputs = ids[:, :-1]  # the last token is predicted, never fed
    attention = torch.ones(rows, prompt_len + inputs.shape[1], dtype=torch.long, device=device)
    out = model(
        input_ids=inputs,
        attention_mask=attention,
        media=media,
        image_offset=None if media is None else offset,
        past_key_values=expand_cache(cache, rows),
        use_cache=True,
    )
    logp = F.log_softmax(out.logits.float(), dim=-1)  # (c, T-1, V)
    picked = logp.gather(-1, ids[:, 1:, None])[..., 0]  # (c, T-1): log p(token j+1 | ... token j)
    valid = torch.arange(1, ids.shape[1], device=device)[None] < lengths[:, None]
    return total + (picked * valid).sum(dim=1)


def _pad_right(
    sequences: Sequence[Sequence[int]], pad_id: int | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> ids (c, T) right-padded with ``pad_id`` and their lengths (c,), on ``device``."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    ids = torch.full((len(sequences), int(lengths.max())), pad_id or 0, dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
    return ids.to(device), lengths.to(device)
