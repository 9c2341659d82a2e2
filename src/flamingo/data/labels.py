"""The label mask of Flamingo training: which tokens the loss supervises.

Two rules: :func:`make_labels` for web data (interleaved documents and image-text pairs: everything inside an
image's chunk), :func:`make_response_labels` for instruction data (only the assistant's answers, found through
:func:`spans_to_token_mask`). Both never supervise padding or ``<image>``.
"""

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


def spans_to_token_mask(offsets: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    """(s,) bool: which tokens overlap one of the character ``spans`` ([start, end) each).

    Args:
        offsets: (s, 2) character [start, end) of each token (a fast tokenizer's ``offset_mapping``); tokens
            with an empty span (padding, some special tokens) never overlap.
        spans: the supervised character ranges of the text.

    A token that straddles a span's edge counts as inside: a BPE token such as `` A`` carries the space of the
    prefix before an answer, and it is the token the model must produce after the prefix.
    """
    mask = torch.zeros(offsets.shape[0], dtype=torch.bool)
    start, end = offsets[:, 0], offsets[:, 1]
    for span_start, span_end in spans:
        mask |= (end > span_start) & (start < span_end) & (end > start)
    return mask


def make_response_labels(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    image_token_id: int,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Labels for instruction tuning: only the tokens of the assistant's answers (and their end token).

    Args:
        input_ids: (b, s) token ids; attention_mask: (b, s), 1 for real tokens.
        response_mask: (b, s) bool, True on the tokens of each answer and the ``<|endofchunk|>`` closing it
            (:func:`spans_to_token_mask` of the answers' character spans).
        image_token_id: id of ``<image>`` (never supervised, even inside a span).

    Returns:
        (b, s) int64 labels, not shifted. Example (``U`` = user turn text, ``A`` = the assistant prefix,
        ``r`` = answer tokens, ``E`` = ``<|endofchunk|>``, ``I`` = ``<image>``)::

            tokens:  I  U  U  A  r  r  E  U  I  U  A  r  E  </s>  P
            labels:  .  .  .  .  r  r  E  .  .  .  .  r  E  .     .
    """
    if not (input_ids.shape == attention_mask.shape == response_mask.shape) or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)}, attention_mask {tuple(attention_mask.shape)} and "
            f"response_mask {tuple(response_mask.shape)} must all be (batch, sequence)"
        )
    keep = response_mask.bool() & attention_mask.bool() & (input_ids != image_token_id)
    return input_ids.long().masked_fill(~keep, ignore_index)
