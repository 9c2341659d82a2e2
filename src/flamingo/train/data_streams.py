"""Data positions that do not depend on the number of ranks: a run's data is ``V`` streams.

A run that starts on ``V`` ranks reads its data as ``V`` streams: stream ``v`` is exactly what rank ``v`` of ``V``
reads (:class:`flamingo.data.loader.SourceDataset` with ``rank=v, world_size=V``), and a checkpoint stores each
stream's position, keyed by stream. ``V`` stays fixed for the life of the run, whatever the number of ranks ``M``
of a later resume.

With ``M == V`` each rank reads its own stream through the ordinary :class:`~flamingo.data.loader.SourceLoader`
(nothing changes). Otherwise a step's global micro-batch of one source, ``M x batch_size`` rows, is made of
``M x batch_size / V`` consecutive rows of every stream, streams in order, and rank ``r`` takes rows
``[r x batch_size, (r + 1) x batch_size)`` of it (:class:`StreamLoader`). So:

* with the same global batch as before, a step trains on exactly the rows the ``V``-rank run would have
  (the same samples, split over ranks differently);
* with fewer ranks (``M < V``) a rank reads several streams whole; with more (``M > V``) several ranks read one
  stream and each keeps its own rows of it (every such rank builds all of that stream's rows: more data work
  per rank, the same data).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from flamingo.data.loader import (
    Batch,
    Mixture,
    SourceConfig,
    SourceDataset,
    SourceLoader,
    pinned,
    skip_counts,
)
from flamingo.distributed import DistInfo
from flamingo.errors import UsageError
from flamingo.model.loss import IGNORE_INDEX


def stream_parts(batch_size: int, rank: int, world_size: int, streams: int) -> list[tuple[int, int, int]]:
    """``(stream, first row, end row)`` of each stream's piece that rank ``rank`` takes per micro-batch.

    Row numbers count within the stream's ``world_size x batch_size / streams`` rows of a micro-batch.
    """
    rows = batch_size * world_size
    if rows % streams:
        raise UsageError(
            f"the run's data is {streams} streams (the number of ranks it started on), so batch_size x ranks "
            f"({batch_size} x {world_size}) must be a multiple of {streams}: change the source's batch_size "
            "or the number of ranks"
        )
    per_stream = rows // streams
    start, stop = rank * batch_size, (rank + 1) * batch_size
    parts = []
    for stream in range(streams):
        low, high = max(start, stream * per_stream), min(stop, (stream + 1) * per_stream)
        if low < high:
            parts.append((stream, low - stream * per_stream, high - stream * per_stream))
    return parts


def concat_batches(batches: list[Batch], pad_id: int, trim_padding: bool) -> Batch:
    """Rows of several batches as one, as :func:`flamingo.data.batch.collate` of all their samples gives it.

    Image slots ``t`` become the most images of any row; token columns ``s`` the longest batch's (with
    ``trim_padding``: the end of the longest real span).
    """
    slots = max(1, max(int(b.image_mask.sum(1).max()) if len(b) else 0 for b in batches))
    length = max(b.input_ids.shape[1] for b in batches)
    if trim_padding:
        ends = [int(m.nonzero()[:, 1].max()) + 1 for b in batches if (m := b.attention_mask).any()]
        length = max(ends, default=1)

    def fit(tensor: torch.Tensor, size: int, dim: int, value: float) -> torch.Tensor:
        if tensor.shape[dim] >= size:
            return tensor.narrow(dim, 0, size)
        shape = list(tensor.shape)
        shape[dim] = size - tensor.shape[dim]
        return torch.cat([tensor, torch.full(shape, value, dtype=tensor.dtype)], dim)

    return Batch(
        images=torch.cat([fit(b.images, slots, 1, 0) for b in batches]),
        image_mask=torch.cat([fit(b.image_mask, slots, 1, False) for b in batches]),
        input_ids=torch.cat([fit(b.input_ids, length, 1, pad_id) for b in batches]),
        attention_mask=torch.cat([fit(b.attention_mask, length, 1, 0) for b in batches]),
        labels=torch.cat([fit(b.labels, length, 1, IGNORE_INDEX) for b in batches]),
    )


def _rows(batch: Batch, start: int, stop: int) -> Batch:
    return Batch(*(getattr(batch, f)[start:stop] for f in batch.__dataclass_fields__))


class StreamLoader:
    """One source's micro-batches for rank ``rank`` of ``world_size`` when the run's data is ``streams`` streams.

    Offers what :class:`~flamingo.data.loader.Mixture` uses of a ``SourceLoader``; ``make_dataset(v)`` builds
    stream ``v``'s dataset. Each stream is read by its own ``SourceLoader`` (prefetching as configured) in
    groups of the stream's rows per micro-batch; the stream's position is the one after its group.
    """

    def __init__(
        self,
        config: SourceConfig,
        make_dataset: Callable[[int], SourceDataset],
        pad_id: int,
        rank: int,
        world_size: int,
        streams: int,
        prefetch: int = 2,
        worker: str = "thread",
        trim_padding: bool = False,
        pin_memory: bool = False,
    ) -> None:
        self.config, self.pad_id, self.trim_padding = config, pad_id, trim_padding
        self.pin_memory = pin_memory
        self.parts = stream_parts(config.batch_size, rank, world_size, streams)
        per_stream = config.batch_size * world_size // streams
        self.loaders: dict[int, SourceLoader] = {}
        for stream, _, _ in self.parts:
            dataset = make_dataset(stream)
            dataset.config = dataclasses.replace(dataset.config, batch_size=per_stream)
            loader = SourceLoader(dataset, pad_id, prefetch, worker, trim_padding)  # type: ignore[arg-type]
            self.loaders[stream] = loader

    def next_batch(self) -> Batch:
        pieces = [_rows(self.loaders[stream].next_batch(), low, high) for stream, low, high in self.parts]
        batch = concat_batches(pieces, self.pad_id, self.trim_padding)
        # Pinned after the rows are joined (the join makes new tensors), for an asynchronous copy to the GPU.
        return pinned(batch) if self.pin_memory else batch

    def stream_states(self) -> dict[int, dict[str, Any]]:
        """Each stream's position after the last micro-batch handed out."""
        return {stream: loader.state_dict() for stream, loader in self.loaders.items()}

    def load_stream_states(self, states: dict[int, dict[str, Any]]) -> None:
        for stream, loader in self.loaders.items():
            loader.load_state_dict(states[stream])

    def state_dict(self) -> dict[str, Any]:
        return {"streams": self.stream_states()}

    def counts(self) -> dict[str, int]:
        """Skips of this rank's streams, summed."""
        total: dict[str, int] = {}
        for state in self.stream_states().values():
            for reason, count in skip_counts(state).items():
                total[reason] = total.get(reason, 0) + count
        return total

    def close(self) -> None:
        for loader in self.loaders.values():
            loader.close()


def mixture_stream_states(mixture: Mixture, info: DistInfo) -> dict[int, dict[str, Any]]:
    """``{stream: {source: position}}`` for the streams this rank reads."""
    states: dict[int, dict[str, Any]] = {}
    for loader in mixture.loaders:
        name = loader.config.name
        if isinstance(loader, StreamLoader):
            for stream, state in loader.stream_states().items():
                states.setdefault(stream, {})[name] = state
        else:
            states.setdefault(info.rank, {})[name] = loader.state_dict()
    return states


def load_mixture_stream_states(mixture: Mixture, states: dict[int, dict[str, Any]], info: DistInfo) -> None:
    """Restore this rank's streams from ``{stream: {source: position}}`` (every stream of the run)."""
    for loader in mixture.loaders:
        name = loader.config.name
        wanted = [s for s, _, _ in loader.parts] if isinstance(loader, StreamLoader) else [info.rank]
        for stream in wanted:
            if name not in states.get(stream, {}):
                raise UsageError(
                    f"the checkpoint has no data position for source {name!r} in stream {stream}: resume with "
                    "the sources it was saved with"
                )
        if isinstance(loader, StreamLoader):
            loader.load_stream_states({stream: states[stream][name] for stream in wanted})
        else:
            loader.load_state_dict(states[info.rank][name])
