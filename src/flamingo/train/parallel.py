"""Processes, devices, and the techniques applied to a model, torchtitan style.

:func:`parallelize` applies them in ONE fixed order, each a plain function of the model:

1. :func:`apply_activation_checkpointing` wraps the LM's decoder layers (the cross-attention stays outside:
   its per-call media state is gone by the time the backward pass would recompute it);
2. :func:`apply_compile` compiles each decoder layer and each cross-attention block (after 1, so the
   recomputed region is compiled too; per block, so one compiled graph serves every layer);
3. :func:`apply_fsdp` (FSDP2 ``fully_shard``: decoder layers, cross-attention blocks, Perceiver and vision
   encoder are separate units, then the root) or :func:`apply_ddp` (last: they wrap what 1 and 2 produced).

Frozen weights stay ``requires_grad=False`` throughout, so neither DDP nor FSDP2 allocate gradients for them.
LoRA (``model.lora``) is injected into the LM before any of this, so the wrappers and shards see its matrices as
ordinary trained parameters of the decoder layers.
After 1 or 2 replace decoder layers, ``model.attach()`` moves the Flamingo hooks onto the new modules.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from flamingo.distributed import DistInfo
from flamingo.model.devices import resolve_device
from flamingo.model.flamingo import Flamingo
from flamingo.model.lm import _get_path
from flamingo.train.config import ParallelConfig


def init_distributed(config: ParallelConfig, device: str = "auto") -> DistInfo:
    """Join the process group that ``torchrun`` describes (RANK, WORLD_SIZE, ...); a lone process joins none.

    Backend ``auto``: NCCL on GPU, gloo on CPU.
    """
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = resolve_device("auto").type == "cuda" if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("train.device is cuda but no CUDA device is visible; set train.device=cpu")
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(target)
    if world > 1 and not dist.is_initialized():
        backend = config.backend if config.backend != "auto" else ("nccl" if use_cuda else "gloo")
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return DistInfo(rank, world, local_rank, target)


def strategy_for(config: ParallelConfig, info: DistInfo) -> str:
    """The strategy actually used: ``none`` in one process, DDP for ``auto`` with several ranks."""
    if not info.distributed:
        return "none"  # DDP or FSDP over one process is the model itself
    return "ddp" if config.strategy == "auto" else config.strategy


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place; a no-op in one process."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def decoder_layers(model: Flamingo) -> nn.ModuleList:
    return _get_path(model.lm, model.layers_path)


def apply_activation_checkpointing(model: Flamingo) -> None:
    """Recompute every decoder layer in the backward pass (non-reentrant), cross-attention outside."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    layers = decoder_layers(model)
    for index, layer in enumerate(layers):
        layers[index] = checkpoint_wrapper(layer)
    model.attach()


def apply_compile(model: Flamingo, backend: str = "inductor") -> None:
    """``torch.compile`` each decoder layer (replaced by its compiled wrapper, hooks moved onto it so the
    cross-attention hook runs eagerly) and each cross-attention block (compiled in place).

    Apply before FSDP2 (``parallelize`` does). The first call compiles: make it outside any
    ``TorchDispatchMode`` such as ``FlopCounterMode``, under which the layers stayed eager in our GPU runs.
    """
    layers = decoder_layers(model)
    for index, layer in enumerate(layers):
        layers[index] = torch.compile(layer, backend=backend)
    for block in model.cross_attn.values():
        block.compile(backend=backend)
    model.attach()


def store_frozen_in(model: nn.Module, dtype: torch.dtype) -> None:
    """Keep the frozen floating-point weights in ``dtype`` (the FSDP2 compute dtype).

    FSDP2's mixed precision casts every weight to ``dtype`` on each all-gather, so frozen weights give the
    same values either way; storing them cast saves their fp32 copy and one cast per unit per step.
    Trainable weights keep fp32 (the optimizer's precision).
    """
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)


def apply_fsdp(model: Flamingo, info: DistInfo, param_dtype: torch.dtype | None, reshard: bool) -> nn.Module:
    """FSDP2: each decoder layer, cross-attention block, the Perceiver and the vision encoder is a unit.

    Frozen and trainable weights sit in separate units (the root keeps the embeddings, the LM head and the
    added-token rows), so frozen units never reduce-scatter gradients. Gradients reduce in fp32. With LoRA the
    decoder-layer units mix frozen weights and trained LoRA matrices: FSDP2 all-gathers both and
    reduce-scatters only the gradients that exist (LoRA's), and the optimizer holds state for LoRA only
    (tested against one process with two gloo ranks).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    if param_dtype is not None:
        store_frozen_in(model, param_dtype)
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    options = {"mesh": mesh, "mp_policy": policy, "reshard_after_forward": reshard}
    for layer in decoder_layers(model):
        fully_shard(layer, **options)
    for block in model.cross_attn.values():
        fully_shard(block, **options)
    fully_shard(model.perceiver, **options)
    fully_shard(model.vision, **options)
    fully_shard(model, **options)
    return model


def apply_ddp(model: Flamingo, info: DistInfo) -> nn.Module:
    """Wrap in DistributedDataParallel; frozen parameters (requires_grad False) get no gradient buckets."""
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def parallelize(
    model: Flamingo, config: ParallelConfig, info: DistInfo, param_dtype: torch.dtype | None = None
) -> tuple[nn.Module, str]:
    """Apply the configured techniques in the documented order; returns (model to call, strategy used)."""
    strategy = strategy_for(config, info)
    if config.activation_checkpointing:
        apply_activation_checkpointing(model)
    if config.compile:
        apply_compile(model)
    if strategy == "fsdp":
        return apply_fsdp(model, info, param_dtype, config.fsdp_reshard_after_forward), strategy
    model.to(info.device)
    if strategy == "ddp":
        return apply_ddp(model, info), strategy
    return model, strategy


def unwrap(model: nn.Module) -> Flamingo:
    """The Flamingo inside a DDP wrapper (FSDP2 keeps the module itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, Flamingo) else model
