"""The label mask of Flamingo training: which tokens the loss supervises."""

from __future__ import annotations

from typing import Literal

import torch


def make_labels(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_token_id: int,
    eoc_token_id: int,
    ignore_index: int = -100,
    mode: Literal["interleaved", "pairs"] = "interleaved",
) -> torch.Tensor:
    """Labels for a batch: ``input_ids`` with the unsupervised positions set to ``ignore_index``.

    Args:
        input_ids: (b, s) token ids, left or right padded.
        attention_mask: (b, s), 1 for real tokens and 0 for padding.
        image_token_id: id of ``<image>``; eoc_token_id: id of ``<|endofchunk|>``.
        mode: ``"pairs"`` or ``"interleaved"``.

    Returns:
        (b, s) int64 labels, not shifted (the loss shifts them, as Hugging Face causal LMs do).

    Rule. Always ignored: padding and every ``<image>`` token. In ``"interleaved"`` mode also ignored:
    everything before the first ``<image>``, and everything after each ``<|endofchunk|>`` up to and including
    the next ``<image>`` (or the end). The ``<|endofchunk|>`` that closes a chunk is supervised. In other
    words a token is supervised when the latest ``<image>`` at or before it comes after the latest
    ``<|endofchunk|>`` strictly before it. Example (``I`` = ``<image>``, ``E`` = ``<|endofchunk|>``,
    ``P`` = pad, ``.`` = ignored)::

        tokens:  P  a  I  b  c  E  d  I  e  E  </s>
        labels:  .  .  .  b  c  E  .  .  e  E  .

    A row with every label ignored makes a mean loss NaN; the loss must guard against it.
    """
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
            "must both be (batch, sequence)"
        )
    if mode not in ("interleaved", "pairs"):
        raise ValueError(f"mode must be 'interleaved' or 'pairs', got {mode!r}")
    real = attention_mask.bool()
    is_image = (input_ids == image_token_id) & real  # (b, s)
    labels = input_ids.long().masked_fill(~real | is_image, ignore_index)
    if mode == "pairs":
        return labels
    is_eoc = (input_ids == eoc_token_id) & real
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)  # (b, s)
    none = torch.full_like(positions, -1)
    # Position of the latest <image> at or before each token; -1 before the first one.
    last_image = torch.where(is_image, positions, none).cummax(dim=1).values
    # Position of the latest <|endofchunk|> strictly before each token (shift right by one).
    last_eoc = torch.where(is_eoc, positions, none).cummax(dim=1).values
    last_eoc_before = torch.cat([none[:, :1], last_eoc[:, :-1]], dim=1)
    inside_chunk = last_image > last_eoc_before
    return labels.masked_fill(~inside_chunk, ignore_index)
