"""The FLOP counter of the trainer's MFU and of the benchmarks (``flamingo.train.flops``): the CPU's fused attention
kernels are counted, by the CUDA kernels' formulas, and the benchmarks count with it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from flamingo.train import flops as library

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_model.py"


@pytest.fixture(scope="module")
def bench_model():
    spec = importlib.util.spec_from_file_location("bench_model_under_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _attention_inputs(b=2, h=4, sq=16, sk=24, d=8):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, h, sq, d, generator=g, requires_grad=True)
    k = torch.randn(b, h, sk, d, generator=g, requires_grad=True)
    v = torch.randn(b, h, sk, d, generator=g, requires_grad=True)
    return q, k, v


@pytest.mark.parametrize("masked", [False, True])
def test_cpu_fused_attention_is_counted(bench_model, masked):
    b, h, sq, sk, d = 2, 4, 16, 24, 8
    q, k, v = _attention_inputs(b, h, sq, sk, d)
    mask = torch.rand(sq, sk, generator=torch.Generator().manual_seed(1)) > 0.2 if masked else None
    one_product = 2 * b * h * sq * sk * d  # one (sq x d) @ (d x sk) per batch and head
    with library.flop_counter() as forward:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with library.flop_counter() as backward:
        out.sum().backward()
    assert forward.get_total_flops() == 2 * one_product  # scores, then scores @ values
    assert backward.get_total_flops() == 5 * one_product  # recomputed scores and four gradient products
    step = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward()  # noqa: E731
    assert library.count_flops(step) == 7 * one_product  # what the trainer counts for a step
    assert bench_model.count_flops(step) == 7 * one_product  # and the benchmarks, through the library


def test_einsum_attention_counts_the_same_products():
    """The reference's einsum attention (bmm) and the fused kernel count alike in the forward pass."""
    q, k, v = _attention_inputs()
    with library.flop_counter() as fused:
        F.scaled_dot_product_attention(q, k, v)
    with library.flop_counter() as explicit:
        torch.einsum("bhqk,bhkd->bhqd", torch.einsum("bhqd,bhkd->bhqk", q, k).softmax(-1), v)
    assert fused.get_total_flops() == explicit.get_total_flops() > 0


def test_matmul_peak_is_measured(bench_model):
    assert bench_model.matmul_peak_gflops("cpu", size=128, repeats=1) > 0
