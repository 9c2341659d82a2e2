"""Next-token cross-entropy computed from the final hidden states without materialising the logits.

The plain path builds the (b, s, vocab) logits, upcasts them, shifts them (a copy), takes a log-softmax (another
copy) and in backward writes three more tensors of that size; with a 32k vocabulary that memory traffic costs
more than the head's matmul on a CPU, and the logits are the largest activation of a training step on a GPU.
:func:`linear_cross_entropy` instead walks the supervised positions in chunks: for each chunk it computes the
logits, their log-sum-exp and, in the same pass, the gradient with respect to the hidden states (softmax minus
one-hot times the head), which is all that backward needs. Unsupervised positions (labels -100) are never
projected at all. The arithmetic is the same as the plain path's; only the order of the sums differs.

Axis letters: b batch, s text length, n supervised positions, c chunk, d width, v vocabulary, k added tokens.
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 1 << 23  # logits per chunk on a CPU (32 MB in fp32): stays in cache-friendly sizes
CHUNK_ELEMENTS_CUDA = 1 << 26  # on a GPU (256 MB in fp32): fewer, larger matmuls
SYNC_FREE_DEVICES = ("cuda", "xpu", "mps")  # devices whose loss never reads a value back mid-step


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ head.T`` (rows ``start..start+k`` taken from ``new_rows``)."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        new_rows: torch.Tensor | None,
        targets: torch.Tensor,
        start: int,
        with_grad: bool,
    ) -> torch.Tensor:
        """hidden (n, d); weight (v, d); bias (v,) or None; new_rows (k, d) or None; targets (n,) -> sum ()."""
        n, vocab = hidden.shape[0], weight.shape[0]
        new = slice(start, start + (0 if new_rows is None else new_rows.shape[0]))
        # needs_input_grad stays True under torch.no_grad(): only compute gradients when autograd will use them
        need = tuple(wanted and with_grad for wanted in ctx.needs_input_grad)
        grad_hidden = torch.zeros_like(hidden) if need[0] else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need[1] else None
        )
        grad_bias = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if need[2] else None
        grad_new = None
        if need[3] and new_rows is not None:
            grad_new = torch.zeros(new_rows.shape, dtype=torch.float32, device=new_rows.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        sync_free = hidden.device.type in SYNC_FREE_DEVICES
        chunk = max(1, (CHUNK_ELEMENTS_CUDA if sync_free else CHUNK_ELEMENTS) // max(1, vocab))
        for begin in range(0, n, chunk):
            h = hidden[begin : begin + chunk].to(weight.dtype)  # (c, d)
            t = targets[begin : begin + chunk]
            logits = (h @ weight.T).float()  # (c, v)
            if new_rows is not None:
                logits[:, new] = (h @ new_rows.to(weight.dtype).T).float()
            if bias is not None:
                logits += bias.float()
            # One fused softmax kernel; -log p(target) is the loss. A target probability that underflows fp32
            # (a loss above ~87 nats) takes the exact log-sum-exp instead.
            # On an accelerator the check would stall the stream once per chunk, so there the loss is always
            # the log-sum-exp (one more read of the chunk, cheap at that bandwidth).
            probs = torch.softmax(logits, dim=-1)  # (c, v)
            if not sync_free:
                p_target = probs.gather(1, t[:, None]).squeeze(1)  # (c,)
                losses = -p_target.log()
                tiny = p_target < 1e-30
                if bool(tiny.any()):
                    exact = torch.logsumexp(logits[tiny], dim=-1) - logits[tiny].gather(
                        1, t[tiny][:, None]
                    ).squeeze(1)
                    losses = losses.masked_scatter(tiny, exact)
            else:
                losses = torch.logsumexp(logits, dim=-1) - logits.gather(1, t[:, None]).squeeze(1)
            total += losses.sum()
            del logits
            if not any(need[:4]):
                continue
            probs[torch.arange(t.shape[0], device=t.device), t] -= 1.0  # d(sum of losses)/d logits
            if grad_bias is not None:
                grad_bias += probs.sum(0)
            probs_new = None
            if new_rows is not None:
                probs_new = probs[:, new].clone()  # (c, k): these logits came from new_rows, not weight
                probs[:, new] = 0.0
            probs_low = probs.to(weight.dtype)
            if grad_hidden is not None:
                g = probs_low @ weight  # (c, d)
                if probs_new is not None:
                    g = g + probs_new.to(weight.dtype) @ new_rows.to(weight.dtype)
                grad_hidden[begin : begin + chunk] = g.to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += (probs_low.T @ h).float()
            if grad_new is not None:
                grad_new += (probs_new.to(weight.dtype).T @ h).float()
        ctx.save_for_backward(
            *(g if g is not None else torch.empty(0) for g in (grad_hidden, grad_weight, grad_bias, grad_new))
        )
        ctx.dtypes = (weight.dtype, None if new_rows is None else new_rows.dtype)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight, grad_bias, grad_new = ctx.saved_tensors
        need = ctx.needs_input_grad
        weight_dtype, new_dtype = ctx.dtypes
        scale = grad_output.float()
        return (
            grad_hidden * scale.to(grad_hidden.dtype) if need[0] else None,
            (grad_weight * scale).to(weight_dtype) if need[1] else None,
            (grad_bias * scale).to(weight_dtype) if need[2] else None,
            (grad_new * scale).to(new_dtype) if need[3] and grad_new.numel() else None,
            None,
            None,
            None,
        )


def linear_cross_entropy(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    new_rows: torch.Tensor | None = None,
    new_start: int = 0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Next-token cross-entropy of ``hidden @ weight.T + bias`` against ``labels`` shifted by one.

    hidden (b, s, d) final hidden states (what the output head reads); labels (b, s) with -100 where nothing is
    supervised; weight (v, d) and bias (v,) the output head; ``new_rows`` (k, d) replace the head's rows
    ``new_start .. new_start+k`` (Flamingo's trainable rows of the added tokens). ``reduction``: ``mean`` over the
    supervised tokens (0, not NaN, when there are none) or ``sum``. Returns a scalar (fp32).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    targets = labels[:, 1:].to(hidden.device)
    keep = targets != IGNORE_INDEX  # (b, s-1)
    rows, cols = keep.nonzero().unbind(1)
    # index_select (backward: a scatter-add) rather than a boolean index (backward: a sorted accumulate)
    picked = hidden.flatten(0, 1).index_select(0, rows * hidden.shape[1] + cols)  # (n, d)
    total = _LinearCrossEntropy.apply(
        picked, weight, bias, new_rows, targets[rows, cols], new_start, torch.is_grad_enabled()
    )
    if reduction == "sum":
        return total
    return total / keep.sum().clamp(min=1)
