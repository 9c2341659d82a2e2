"""Counting a step's floating-point operations: what the trainer's MFU and the benchmarks divide by time.

The count comes from ``torch.utils.flop_counter.FlopCounterMode`` on one real call (forward, backward, the
frozen encoder included), with formulas added for the CPU's fused attention kernels, which the stock counter
leaves at zero: ``torch.utils.flop_counter`` has formulas for the CUDA attention kernels but not for
``_scaled_dot_product_flash_attention_for_cpu`` (forward and backward), which every
``F.scaled_dot_product_attention`` call runs on a CPU. Without them the attention of the Hugging Face LM, of the
Perceiver and of the cross-attention would count as zero on a CPU while an einsum attention (``bmm``) counts. The
added formulas are the CUDA kernels' (the backward includes the recomputed scores, as there).

Matrix products and attention are counted; element-wise work (norms, activations, the optimizer's update) is
not, as is usual for MFU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

GPU_PEAK_FLOPS = 989e12  # H100 SXM dense bf16
CPU_PEAK_FLOPS = 70e9  # fp32, 2 threads


def default_peak_flops(device: torch.device) -> float:
    """The peak FLOP/s MFU is measured against when ``logging.peak_flops`` is not set."""
    return GPU_PEAK_FLOPS if device.type == "cuda" else CPU_PEAK_FLOPS


def flop_counter() -> Any:
    """A ``FlopCounterMode`` (no printed table) that also counts the CPU's fused attention kernels; use it as a
    context manager and read ``get_total_flops()`` afterwards."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out, query, key, value)

    return FlopCounterMode(
        display=False,
        custom_mapping={
            aten._scaled_dot_product_flash_attention_for_cpu: forward,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
        },
    )


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of ``fn``, counted by :func:`flop_counter`."""
    with flop_counter() as counter:
        fn()
    return float(counter.get_total_flops())
