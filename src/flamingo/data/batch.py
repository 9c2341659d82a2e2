"""Samples, collated micro-batches, and the packing of short samples into rows.

Axis letters as in docs/design.md, "Contracts": b batch, t image slot, s text length, c/h/w pixels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from flamingo.model.loss import IGNORE_INDEX


@dataclass
class Sample:
    """One training sequence: ``input_ids``/``attention_mask``/``labels`` (s,), ``pixels`` (t, c, h, w)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pixels: torch.Tensor


@dataclass
class Batch:
    """A collated micro-batch of one source."""

    images: torch.Tensor
    """(b, t, 1, c, h, w) pixels; empty slots are zeros."""
    image_mask: torch.Tensor
    """(b, t) bool, True where a slot holds an image."""
    input_ids: torch.Tensor
    """(b, s) int64"""
    attention_mask: torch.Tensor
    """(b, s) int64, 1 for real tokens"""
    labels: torch.Tensor
    """(b, s) int64, not shifted; -100 where unsupervised"""

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(getattr(self, f).to(device, non_blocking=True) for f in self.__dataclass_fields__))

    @property
    def num_supervised(self) -> int:
        """Tokens the next-token loss counts (labels after the shift)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def collate(samples: Sequence[Sample], pad_id: int, trim_padding: bool = False) -> Batch:
    """Stack samples: images into (b, t, 1, c, h, w) with t the most images of any sample (at least 1).

    Token tensors are (b, s) with s the longest sample. ``trim_padding``: s is the end of the longest real
    (attention-mask) span instead, so that samples padded to ``max_tokens`` on the right lose the columns no row
    uses. Under a causal mask no real token sees those columns, so the loss is unchanged (up to float rounding)
    while the step does less work. Left-padded samples end in a real token and are never cut.
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    length = max(s.input_ids.shape[0] for s in samples)
    if trim_padding:
        length = max(1, max(_real_end(s.attention_mask) for s in samples))
    slots = max(1, max(s.pixels.shape[0] for s in samples))
    chw = next((s.pixels.shape[1:] for s in samples if s.pixels.shape[0]), None)
    if chw is None:
        raise ValueError("collate: no sample in the batch has an image")
    b = len(samples)
    images = torch.empty(b, slots, 1, *chw)  # every slot is written below: real pixels or zeros
    image_mask = torch.zeros(b, slots, dtype=torch.bool)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(b, length, dtype=torch.long)
    labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
    for row, sample in enumerate(samples):
        t, s = sample.pixels.shape[0], min(length, sample.input_ids.shape[0])
        images[row, :t, 0] = sample.pixels
        images[row, t:] = 0
        image_mask[row, :t] = True
        input_ids[row, :s], attention_mask[row, :s], labels[row, :s] = (
            sample.input_ids[:s],
            sample.attention_mask[:s],
            sample.labels[:s],
        )
    return Batch(images, image_mask, input_ids, attention_mask, labels)


def _real_end(attention_mask: torch.Tensor) -> int:
    """One past the last real position of a (s,) attention mask (0 when it has none)."""
    real = attention_mask.nonzero()
    return int(real[-1, 0]) + 1 if real.numel() else 0


def starts_with_image(sample: Sample, image_token_id: int, bos_token_id: int | None = None) -> bool:
    """Whether the sample's first real token (after a leading BOS, if any) is ``<image>``."""
    ids = sample.input_ids[sample.attention_mask.bool()]
    if len(ids) > 1 and bos_token_id is not None and int(ids[0]) == bos_token_id:
        ids = ids[1:]
    return len(ids) > 0 and int(ids[0]) == image_token_id


def concat_samples(samples: Sequence[Sample], length: int, pad_id: int) -> Sample:
    """One row: the samples' real tokens in order, right-padded to ``length``; pixels (t, c, h, w) in order.

    Each sample's first label is ignored: alone, it was never a target (the loss predicts token i+1 from token
    i), and in the row it must not become the target of the previous sample's last token. So the supervised
    targets of a row are exactly those of its samples.
    """
    real = [s.attention_mask.bool() for s in samples]
    ids = torch.cat([s.input_ids[m] for s, m in zip(samples, real)])  # (n,)
    labels = torch.cat(
        [s.labels[m].index_fill(0, torch.tensor([0]), IGNORE_INDEX) for s, m in zip(samples, real)]
    )
    if ids.shape[0] > length:
        raise ValueError(f"{len(samples)} samples hold {ids.shape[0]} tokens, more than a row of {length}")
    pad = length - ids.shape[0]
    return Sample(
        input_ids=F.pad(ids, (0, pad), value=pad_id),
        attention_mask=F.pad(torch.ones_like(ids), (0, pad), value=0),
        labels=F.pad(labels, (0, pad), value=IGNORE_INDEX),
        pixels=torch.cat([s.pixels for s in samples]),
    )


def pack_samples(
    stream: Iterator[tuple[Sample, Any]],
    max_tokens: int,
    pad_id: int,
    image_token_id: int,
    bos_token_id: int | None = None,
) -> Iterator[tuple[Sample, Any]]:
    """Greedy packing of ``(sample, state)`` pairs into ``(row, state of the row's last sample)``.

    A row takes samples in stream order while their real tokens fit in ``max_tokens``; a sample that does
    not open with ``<image>`` (see :func:`starts_with_image`) only ever starts a row, so no sample's tokens see
    an earlier sample's image through cross-attention (policy ``previous``). Deterministic: the rows are a
    function of the stream, and resuming a stream at a row's state rebuilds the rows that followed it.
    """
    row: list[Sample] = []
    used, row_state = 0, None
    for sample, state in stream:
        size = int(sample.attention_mask.sum())
        if row and (used + size > max_tokens or not starts_with_image(sample, image_token_id, bos_token_id)):
            yield concat_samples(row, max_tokens, pad_id), row_state
            row, used = [], 0
        row.append(sample)
        used, row_state = used + size, state
        if used == max_tokens:  # full: emit now rather than after reading one more sample
            yield concat_samples(row, max_tokens, pad_id), row_state
            row, used = [], 0
