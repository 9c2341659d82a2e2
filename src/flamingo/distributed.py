"""Where this process stands among ``torchrun``'s: the one ``DistInfo`` that training and evaluation share.

Training (:func:`flamingo.train.parallel.init_distributed`) and evaluation
(:func:`flamingo.eval.distributed.init_distributed`) each join the process group their own way; both describe the
result with :class:`DistInfo` and wait for each other with :func:`barrier`. Without ``torchrun`` (one process)
everything here is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """This process's place: rank, world size, local rank and device, and whether it created the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False
    """Whether this process created the process group (and so destroys it when done)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def barrier(info: DistInfo) -> None:
    """Wait for every rank; a no-op in one process."""
    if info.distributed:
        dist.barrier()
