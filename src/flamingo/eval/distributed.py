"""Sharding an evaluation across ``torchrun`` processes and gathering the predictions on every rank.

Every example has an index. Rank r evaluates indices r, r + world, r + 2*world, ...; shards are padded to
equal length by repeating their last index, so every rank runs the same number of batches (collective
operations inside a sharded model stay in step). Gathering drops the padded duplicates by index.
Without ``torchrun`` (or with one process) everything is a no-op.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from flamingo.distributed import DistInfo

T = TypeVar("T")


def init_distributed(device: str | torch.device = "cpu") -> DistInfo:
    """Join the process group ``torchrun`` describes (gloo on CPU, nccl on CUDA), if any."""
    owns_group = False
    if not (dist.is_available() and dist.is_initialized()):
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return DistInfo()
        dist.init_process_group(backend="nccl" if torch.device(device).type == "cuda" else "gloo")
        owns_group = True
    rank = dist.get_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    return DistInfo(rank, dist.get_world_size(), local_rank, owns_group=owns_group)


def close_distributed(info: DistInfo) -> None:
    """Destroy the process group if ``init_distributed`` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def shard_indices(num_examples: int, rank: int, world_size: int) -> list[int]:
    """This rank's example indices, padded to ``ceil(n / world)`` by repeating its last (or the last) index."""
    if num_examples == 0:
        return []
    indices = list(range(rank, num_examples, world_size))
    length = math.ceil(num_examples / world_size)
    filler = indices[-1] if indices else num_examples - 1
    return indices + [filler] * (length - len(indices))


def dedupe(items: Sequence[T], key: Callable[[T], Hashable]) -> list[T]:
    """``items`` without later repeats of the same key, sorted by key."""
    seen: dict[Hashable, T] = {}
    for item in items:
        seen.setdefault(key(item), item)
    return [seen[k] for k in sorted(seen)]


def gather_objects(items: list[Any], info: DistInfo) -> list[Any]:
    """Every rank's ``items`` concatenated in rank order, on every rank."""
    if info.world_size <= 1:
        return list(items)
    parts: list[Any] = [None] * info.world_size
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if info.world_size <= 1:
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
