"""The optimizer (AdamW with weight decay on the cross-attention only), the schedule and gradient clipping.

LoRA matrices of the LM (``*.lora_A.*``, ``*.lora_B.*``) form their own group with their own weight decay
(``model.lora.weight_decay``, 0 by default): decoupled decay on A and B pulls the update B A towards zero, that
is towards the base LM, a prior that the cross-attention's 0.1 was never tuned for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from flamingo.train.config import OptimizerConfig, ScheduleConfig


def decays(name: str, param: torch.Tensor, decay_on: str) -> bool:
    """Whether parameter ``name`` gets weight decay.

    OpenFlamingo v2 decays every cross-attention parameter and nothing else (see docs/openflamingo-compat.md,
    "Training recipe"); ``cross_attn_matrices`` spares the gates, norms and biases, the usual choice elsewhere.
    """
    in_xattn = name.startswith("cross_attn.") or ".cross_attn." in name
    if decay_on == "cross_attn":
        return in_xattn
    if decay_on == "cross_attn_matrices":
        return in_xattn and param.ndim >= 2
    return False


def is_lora(name: str) -> bool:
    """Whether parameter ``name`` is a LoRA matrix of the LM (PEFT names them ``<layer>.lora_A.<adapter>.*``)."""
    return ".lora_A." in name or ".lora_B." in name


def build_optimizer(
    model: nn.Module, config: OptimizerConfig, lora_weight_decay: float = 0.0
) -> torch.optim.AdamW:
    """AdamW over the parameters that require grad only: frozen weights get no optimizer state."""
    decay, no_decay, lora = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if is_lora(name):
            lora.append(param)
        else:
            (decay if decays(_clean(name), param, config.decay_on) else no_decay).append(param)
    if not decay and not no_decay and not lora:
        raise ValueError("the model has no trainable parameter: did freezing remove everything?")
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        {"params": lora, "weight_decay": lora_weight_decay},
    ]
    # The fused kernel (one launch for all tensors, DTensors included) matters on GPUs, where the per-tensor
    # launches of ~1000 parameters otherwise cost a fixed slice of every step.
    fused = all(p.is_cuda for p in decay + no_decay + lora)
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=config.lr,
        betas=tuple(config.betas),
        eps=config.eps,
        fused=fused,
    )


def _clean(name: str) -> str:
    """A parameter name without the wrappers' prefixes (DDP ``module.``, compile, checkpoint wrappers)."""
    for prefix in ("module.", "_orig_mod.", "_checkpoint_wrapped_module."):
        name = name.replace(prefix, "")
    return name


def lr_at(step: int, lr: float, schedule: ScheduleConfig, total_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then constant or cosine.

    Counted in optimizer steps, never micro-batches (OpenFlamingo counted micro-batches; see
    docs/openflamingo-compat.md, "Training recipe").
    """
    warmup = schedule.warmup_steps
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule.schedule == "constant":
        return lr
    span = max(1, total_steps - warmup - 1)
    progress = min(1.0, (step - warmup) / span)
    floor = schedule.min_lr_ratio
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_gradients(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip the global L2 norm of the gradients to ``max_norm`` (0: measure only); returns the norm before.

    Called once per optimizer step, on the accumulated gradient. Under FSDP2 the norm is a DTensor and is
    gathered here, so every rank sees the same value.
    """
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    limit = max_norm if max_norm > 0 else math.inf
    norm = torch.nn.utils.clip_grad_norm_(grads, limit, foreach=True)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
