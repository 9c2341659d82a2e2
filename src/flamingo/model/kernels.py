"""Kernel choices: where the model computes a value by another route than the obvious one because that route is
faster on some hardware. Each keeps the obvious route's values (up to the order of floating-point sums) and says
what was measured to justify it; the model calls these functions and holds no hardware tuning of its own.

1. :func:`added_rows`: the trainable rows of the added tokens are looked up with a one-hot matmul, not an index.
2. :func:`skinny_linear` (with :func:`skinny_head_applies`): a CPU decode step's output head as
   ``weight @ x.T``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SKINNY_HEAD_ROWS = 16
"""Decode steps on a CPU with at most this many head rows (beams x batch) take :func:`skinny_linear`."""


def added_rows(relative_ids: torch.Tensor, table: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The rows of ``table`` (k, d) for ``relative_ids`` (b, s) clamped into ``[0, k)`` -> (b, s, d) in ``dtype``.

    Why a one-hot matmul and not ``table[ids]``: equal values, and the backward of a matmul is a matmul, where
    an index's backward accumulates every position into k rows (a sort on a GPU, measured at about 6 ms per
    training step at OpenFlamingo-3B size).
    """
    count = table.shape[0]
    one_hot = F.one_hot(relative_ids.clamp(0, count - 1), count).to(dtype)  # (b, s, k)
    return one_hot @ table.to(dtype)


def skinny_head_applies(module: nn.Module, hidden: torch.Tensor) -> bool:
    """Whether ``module(hidden)`` is a no-graph fp32 CPU linear over at most ``SKINNY_HEAD_ROWS`` rows whose
    weight lives on the CPU (an offloaded head's weight is only there while its own forward runs)."""
    return (
        type(module) is nn.Linear
        and not torch.is_grad_enabled()
        and hidden.device.type == "cpu"
        and module.weight.device == hidden.device  # not offloaded (accelerate keeps such weights on "meta")
        and hidden.dtype == module.weight.dtype == torch.float32
        and 0 < hidden[..., 0].numel() <= SKINNY_HEAD_ROWS
    )


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for a few rows against a wide weight, as ``weight @ x.T``.

    x (..., d) with few rows, weight (v, d) -> (..., v). Why: on a CPU, BLAS runs ``x @ weight.T`` with a handful
    of rows 3-8x below the memory bandwidth of reading ``weight`` (measured with MKL on a 2-core x86 machine:
    4.1 ms for a 32k x 256 head and one row, 12.3 ms for three rows), while ``weight @ x.T`` with at least two
    columns streams it (0.8-1.5 ms). A single row is padded to two: BLAS would take the slow matrix-vector path
    for it. Values equal ``F.linear``'s up to the order of the fp32 sums.
    """
    flat = x.reshape(-1, x.shape[-1])  # (n, d)
    n = flat.shape[0]
    cols = flat.T if n > 1 else torch.cat([flat, flat]).T  # (d, max(n, 2))
    out = (weight @ cols)[:, :n].T.contiguous()  # (n, v)
    if bias is not None:
        out = out + bias
    return out.view(*x.shape[:-1], weight.shape[0])
