"""Training data: one resumable sample stream per source, collation, and a weighted mixture of sources.

Order is a pure function of ``(seed, epoch, rank)``: each epoch shuffles the shard list, and each shard is read
in blocks of ``shuffle_block`` raw samples, each block shuffled with its own seed. A position is therefore
``(epoch, shard cursor, offset in shard, epoch index)``; resuming re-reads the shard's tar members (no image
decoding) up to the offset and continues exactly where it stopped.

Ranks split the data by shard when there are at least as many shards as ranks, else by the index of each raw
sample in the epoch's stream (``index % world_size == rank``), so no rank is ever left without data.

Workers (``num_workers`` per source, see :class:`SourceLoader`) split a rank's stream by raw sample index: worker
``w`` of ``W`` reads the same tar members as the others (cheap: no image is decoded) but checks, decodes,
preprocesses, tokenizes and collates only the raw samples whose index in the rank's epoch stream is ``w`` modulo
``W`` (under the sample split between ranks: ``rank + world_size * w`` modulo ``world_size * W``). Batch ``k``
handed to the training loop is worker ``k % W``'s next batch. Each worker keeps its own position, so the
loader's state is one position per worker plus whose turn is next, and a resumed run restarts every worker
where the consumed stream left it. With one worker this is the single stream above; with more, samples group
into batches differently (worker 1's first batch holds raw samples 1, 1+W, 1+2W, ...), so changing
``num_workers`` changes the batches (not the data seen per epoch) and a run resumes only with the same value.

Samples (one per document, pair or conversation) carry their images in the order of their ``<image>`` tokens and
labels from :mod:`flamingo.data.labels` (``make_labels`` for web data, ``make_response_labels`` for instruction
data, see :mod:`flamingo.data.sft`). Each raw sample goes through :func:`flamingo.data.usable.check_sample`, the
check ``flamingo data validate`` applies too: unusable samples are skipped and counted per reason, as are the
samples and images the source's settings leave out (no image above the threshold, no supervised token, ...).
Collation gives what :class:`flamingo.model.flamingo.Flamingo` takes (axis letters as in docs/design.md,
"Contracts"). Sequences are padded to ``max_tokens`` (static shapes for ``torch.compile``).

Packing (``pack: true``, :func:`pack_samples`): consecutive samples are concatenated greedily into rows of
``pack_max_tokens`` (padded to it), with their images in order. Under the ``previous`` media policy a token sees
only the latest ``<image>`` before it, so a sample joins a row only when it opens with its own ``<image>`` (a
sample that does not starts a new row); the LM's self-attention still sees the earlier samples of the row, as in
GPT-style packing. A row's state is the position after its last sample, so a resumed run re-reads the sample
that did not fit and builds the same rows.
"""

from __future__ import annotations

import copy
import functools
import queue
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from PIL import Image

from flamingo.configs import ConfigError, between

# Samples, batches and packing live in flamingo.data.batch; importable from here as before.
from flamingo.data.batch import IGNORE_INDEX, Batch, Sample, collate, pack_samples  # noqa: F401
from flamingo.data.interleaved import PAIR_MAX_TOKENS, InterleavedConfig
from flamingo.data.paths import SHARD_SUFFIXES, expand_paths
from flamingo.data.remote import RetryPolicy
from flamingo.data.sft import ChatTemplate, iter_jsonl_samples
from flamingo.data.shards import FileReadLog, ReadStats, count_checked, iter_tar_samples

# The one sample check, shared with the shard readers and `flamingo data validate`; applied here to raw tar
# members, which can be skipped without decoding (resumption) or left to another rank.
from flamingo.data.usable import SampleSettings, check_sample
from flamingo.errors import MissingFileError
from flamingo.forked import ForkedIterator

ImageTransform = Callable[[Sequence[Image.Image]], torch.Tensor]
MAX_SEQUENCE = 1 << 20
"""Longest sequence (tokens per row) a source config may ask for."""
MAX_WORKERS = 256
"""Most data workers one source may ask for."""


@dataclass
class SourceConfig:
    """One training data source: its shards, how its samples are built, batched and weighted."""

    name: str = "interleaved"
    """Name in logs and metrics; unique among the sources."""
    kind: Literal["interleaved", "pairs", "sft"] = "interleaved"
    """``interleaved`` documents (MMC4-like shards), image-text ``pairs`` (img2dataset shards) or ``sft``
    conversations (flamingo-sft/1 tar shards or JSONL; only the answers are supervised)."""
    shards: list[str] = field(default_factory=list)
    """Shard files, globs, brace patterns or folders; empty means the source is absent."""
    batch_size: int = field(default=8, metadata=between(1, 65536))
    """Samples per micro-batch on each rank."""
    loss_weight: float = field(default=1.0, metadata=between(0, 1e6))
    """Weight of this source's mean token loss in the step's objective (OpenFlamingo: pairs 0.2)."""
    sample_weight: float = field(default=1.0, metadata=between(0, 1e6))
    """Relative chance of being picked for a step when ``data.mixing`` is ``sample``."""
    max_tokens: int | None = field(default=None, metadata=between(2, MAX_SEQUENCE))
    """Sequence length; None: 256 for interleaved and sft, 32 for pairs (OpenFlamingo)."""
    max_images: int = field(default=6, metadata=between(1, 1024))
    """Most images per interleaved document."""
    min_image_bytes: int = field(default=10_000, metadata=between(0, 1 << 40))
    """Interleaved images with fewer encoded bytes are dropped (set 0 for tiny synthetic images)."""
    sim_threshold: float = field(default=0.24, metadata=between(-1, 1))
    """Interleaved image-sentence pairs with a lower similarity are dropped."""
    single_image_drop_prob: float = field(default=0.5, metadata=between(0, 1))
    """Chance of skipping an interleaved document left with one image."""
    assignment: Literal["stored", "hungarian"] = "stored"
    """Image-sentence assignment: the stored ``matched_text_index`` or a fresh Hungarian one."""
    drop_bad_images: bool = False
    """Keep documents without their corrupt images instead of skipping them."""
    shuffle_block: int = field(default=256, metadata=between(1, 1_000_000))
    """Raw samples shuffled together within a shard (1: shard order only)."""
    template: ChatTemplate = field(default_factory=ChatTemplate)
    """sft only: the role prefixes of the prompt template."""
    pack: bool = False
    """Concatenate consecutive samples that open with <image> into rows of pack_max_tokens (batch_size rows)."""
    pack_max_tokens: int | None = field(default=None, metadata=between(2, MAX_SEQUENCE))
    """Length of a packed row; None: max_tokens (set it higher to pack several full-length samples)."""
    num_workers: int = field(default=1, metadata=between(1, MAX_WORKERS))
    """Workers (processes or threads, ``data.worker``) building this source's batches side by side, each from
    every ``num_workers``-th raw sample; their batches are taken in turn. More workers change which samples
    share a batch, so a run resumes only with the value it was saved with."""
    retries: int = field(default=3, metadata=between(0, 100))
    """Remote shards (s3://, gs://, https://, pipe:): reopenings after a transient failure before the shard is
    skipped (counted as ``read_failed``); a reopened shard resumes after the last sample read."""
    retry_backoff: float = field(default=1.0, metadata=between(0, 3600))
    """Seconds before the first retry of a remote shard; each further retry waits twice as long."""

    def __post_init__(self) -> None:
        if self.kind not in ("interleaved", "pairs", "sft"):
            raise ConfigError(
                f"source {self.name!r}: kind must be 'interleaved', 'pairs' or 'sft', got {self.kind!r}"
            )
        if self.pack_max_tokens is not None and self.pack_max_tokens < self.sequence_length:
            raise ConfigError(
                f"source {self.name!r}: pack_max_tokens ({self.pack_max_tokens}) is shorter than a sample "
                f"(max_tokens {self.sequence_length}); raise it or leave it unset"
            )
        if isinstance(self.shards, str):
            self.shards = [self.shards]
        for name in ("batch_size", "shuffle_block", "max_images", "num_workers"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"source {self.name!r}: {name} must be at least 1, got {getattr(self, name)}"
                )
        if self.loss_weight < 0 or self.sample_weight < 0:
            raise ConfigError(f"source {self.name!r}: loss_weight and sample_weight must be >= 0")
        self.interleaved_config()  # validates the preprocessing knobs

    @property
    def sequence_length(self) -> int:
        default = PAIR_MAX_TOKENS if self.kind == "pairs" else 256
        return self.max_tokens or default

    @property
    def row_length(self) -> int:
        """Tokens per row of a batch: the packed row length, or the sequence length."""
        return (self.pack_max_tokens or self.sequence_length) if self.pack else self.sequence_length

    def interleaved_config(self) -> InterleavedConfig:
        return InterleavedConfig(
            max_images=self.max_images,
            max_tokens=self.sequence_length,
            sim_threshold=self.sim_threshold,
            min_image_bytes=self.min_image_bytes,
            single_image_drop_prob=self.single_image_drop_prob,
            assignment=self.assignment,
        )


def sample_settings(
    source: SourceConfig, tokenizer: Any, image_token_id: int | None = None, eoc_token_id: int | None = None
) -> SampleSettings:
    """How the samples of ``source`` are checked and prepared: the loader's settings, which
    ``flamingo data validate --config`` uses too."""
    return SampleSettings(
        kind=source.kind,
        verify_images=True,
        drop_bad_images=source.drop_bad_images,
        tokenizer=tokenizer,
        max_tokens=source.sequence_length,
        interleaved=source.interleaved_config(),
        template=source.template,
        image_token_id=image_token_id,
        eoc_token_id=eoc_token_id,
    )


def check_packing(sources: Sequence[SourceConfig], media_policy: str) -> None:
    """Refuse packing unless every token sees only the latest image before it (media policy ``previous``)."""
    packed = [source.name for source in sources if source.pack]
    if packed and media_policy != "previous":
        raise ValueError(
            f"sources {packed} pack samples, but the model's cross_attn.media_policy is {media_policy!r}: its "
            "tokens would attend to the images of the earlier samples of a row. Set pack: false for them, or "
            "train a model with media_policy 'previous'"
        )


@dataclass
class Position:
    """Where a rank's stream of one source stands; with the config and seed, enough to continue exactly."""

    epoch: int = 0
    shard_cursor: int = 0
    """Index into this rank's shard order of the epoch."""
    offset: int = 0
    """Raw samples of that shard already passed (in shuffled order)."""
    epoch_index: int = 0
    """Raw samples of the epoch passed, over all shards (sample-index split)."""


class SourceDataset(torch.utils.data.IterableDataset):
    """The endless, deterministic, resumable sample stream of one source on one rank.

    Iterating yields ``(sample, state)`` where ``state`` (see :meth:`state_dict`) is the position just after
    ``sample``: pass the state of the last sample trained on to :meth:`load_state_dict` to resume.
    """

    def __init__(
        self,
        config: SourceConfig,
        tokenizer: Any,
        image_transform: ImageTransform,
        image_token_id: int,
        eoc_token_id: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        # A private tokenizer: a fast tokenizer keeps its truncation/padding settings in shared mutable state,
        # so two sources tokenizing to different lengths in their prefetch threads would race on one.
        self.tokenizer = copy.deepcopy(tokenizer)
        self.config, self.image_transform = config, image_transform
        self.image_token_id, self.eoc_token_id = image_token_id, eoc_token_id
        self.seed, self.rank, self.world_size = seed, rank, world_size
        suffixes = (*SHARD_SUFFIXES, ".jsonl") if config.kind == "sft" else SHARD_SUFFIXES
        self.shards = [str(p) for p in expand_paths(config.shards, suffixes)]
        if not self.shards:
            raise MissingFileError(f"source {config.name!r}: shards {config.shards} name no file")
        if config.kind == "sft" and not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                f"source {config.name!r}: sft sources need a fast tokenizer (answers are found through its "
                "character offsets); load the tokenizer with use_fast=True"
            )
        self.split: Literal["shard", "sample"] = "shard" if len(self.shards) >= world_size else "sample"
        self.settings = sample_settings(config, self.tokenizer, image_token_id, eoc_token_id)
        self.worker, self.num_workers = 0, 1
        """This stream is worker ``worker`` of ``num_workers`` (see :meth:`for_worker`)."""
        self.retry = RetryPolicy(config.retries, config.retry_backoff)
        self.position = Position()
        self.read_stats = ReadStats()
        self.skipped: Counter[str] = Counter()
        """Samples read fine but not trained on, per reason (preprocessing, no supervised token, ...)."""

    def for_worker(self, worker: int, num_workers: int) -> SourceDataset:
        """The stream of worker ``worker`` of ``num_workers``: the raw samples of this rank whose index in the
        epoch is ``worker`` modulo ``num_workers``, from the start, with counts of its own.

        File-level counts (files opened, missing, unreadable or truncated files) go to worker 0 alone, which
        reads every file as the others do: summed over the workers, the counts are those of one stream.
        """
        if not 0 <= worker < num_workers:
            raise ValueError(f"worker must be in [0, {num_workers}), got {worker}")
        view = copy.copy(self)
        # Its own tokenizer, as for a source of its own: thread workers must not share one's mutable state.
        view.tokenizer = copy.deepcopy(self.tokenizer)
        view.settings = sample_settings(self.config, view.tokenizer, self.image_token_id, self.eoc_token_id)
        view.worker, view.num_workers = worker, num_workers
        view.position, view.read_stats, view.skipped = Position(), ReadStats(), Counter()
        return view

    def _mine(self, epoch_index: int) -> bool:
        """Whether the raw sample at ``epoch_index`` of the epoch belongs to this rank and worker."""
        if self.split == "shard":  # the rank's shards are its own: split them among its workers
            return epoch_index % self.num_workers == self.worker
        lanes = self.world_size * self.num_workers
        return epoch_index % lanes == self.rank + self.world_size * self.worker

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "position": dict(self.position.__dict__),
            "read_stats": self.read_stats.to_dict(),
            "skipped": dict(self.skipped),
            "split": self.split,
            "num_shards": len(self.shards),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_shards"] != len(self.shards) or state["split"] != self.split:
            raise ValueError(
                f"source {self.config.name!r}: the saved position is for {state['num_shards']} shards split by "
                f"{state['split']}, now there are {len(self.shards)} split by {self.split}; resume with the "
                "same shards and number of ranks"
            )
        self.position = Position(**state["position"])
        stats = state["read_stats"]
        self.read_stats = ReadStats(
            stats["files"], stats["samples"], Counter(stats["skipped"]), Counter(stats["images_dropped"])
        )
        self.skipped = Counter(state["skipped"])

    def counts(self) -> dict[str, int]:
        """Every skip so far, per reason (see :func:`skip_counts`)."""
        return skip_counts(self.state_dict())

    # ------------------------------------------------------------------ order
    def _rng(self, *parts: Any) -> random.Random:
        # String seeds hash with SHA-512 in CPython: the same in every process, unlike hash().
        return random.Random(":".join(map(str, (self.seed, self.config.name, *parts))))

    def epoch_shards(self, epoch: int) -> list[str]:
        """This rank's shards for ``epoch``, in reading order."""
        order = list(self.shards)
        self._rng("shards", epoch).shuffle(order)
        return order[self.rank :: self.world_size] if self.split == "shard" else order

    def _raw_members(
        self, shard: str, epoch: int, start: int
    ) -> Iterator[tuple[int, str, dict, FileReadLog]]:
        """(offset, key, members, log) of a shard's raw samples in block-shuffled order, from ``start``."""
        log = FileReadLog(shard, self.read_stats)
        if start or self.worker:
            # Counted before the position was saved, or counted by worker 0 (see for_worker).
            self.read_stats.files -= 1
        # The reading's own problems (a missing, unreadable or truncated file) count once, in worker 0.
        reading = log if self.worker == 0 else FileReadLog(shard, ReadStats())
        block: list[tuple[str, dict]] = []
        block_index, offset = 0, 0
        jsonl = self.config.kind == "sft" and shard.endswith(".jsonl")
        raw = iter_jsonl_samples(shard, reading) if jsonl else iter_tar_samples(shard, reading, self.retry)
        while True:
            block = [item for _, item in zip(range(self.config.shuffle_block), raw)]
            if not block:
                break
            if offset + len(block) > start:
                # Seeded by the shard's index in the source, not its path: moving the data keeps the order.
                self._rng("block", epoch, self.shards.index(shard), block_index).shuffle(block)
                for i, (key, members) in enumerate(block):
                    if offset + i >= start:
                        yield offset + i, key, members, log
            offset += len(block)
            block_index += 1
        log.finish()

    # ------------------------------------------------------------------ samples
    def __iter__(self) -> Iterator[tuple[Sample, dict[str, Any]]]:
        while True:
            yield from self.epoch_samples()
            self.position = Position(epoch=self.position.epoch + 1)

    def epoch_samples(self) -> Iterator[tuple[Sample, dict[str, Any]]]:
        """``(sample, state)`` of the rest of the current epoch, from the current position (see ``__iter__``);
        afterwards :meth:`counts` holds every skip of the epoch."""
        pos = self.position
        shards = self.epoch_shards(pos.epoch)
        fresh, yielded = pos == Position(epoch=pos.epoch), False
        while pos.shard_cursor < len(shards):
            shard = shards[pos.shard_cursor]
            for offset, key, members, log in self._raw_members(shard, pos.epoch, pos.offset):
                mine = self._mine(pos.epoch_index)
                pos.offset, pos.epoch_index = offset + 1, pos.epoch_index + 1
                sample = self._make_sample(key, members, shard, log, pos.epoch) if mine else None
                if sample is not None:
                    yielded = True
                    yield sample, self.state_dict()
            pos.shard_cursor, pos.offset = pos.shard_cursor + 1, 0
        if fresh and not yielded:  # a resumed epoch may end right after its saved position
            worker = f" (data worker {self.worker} of {self.num_workers})" if self.num_workers > 1 else ""
            fix = "; or lower num_workers" if self.num_workers > 1 else ""
            raise ValueError(
                f"source {self.config.name!r}: a whole epoch of {len(shards)} shard(s) gave rank {self.rank}"
                f"{worker} no usable sample (skipped: {self.counts()}); check the shards with "
                f"`flamingo data validate`{fix}"
            )

    def _make_sample(
        self, key: str, members: dict, shard: str, log: FileReadLog, epoch: int
    ) -> Sample | None:
        """Check, preprocess, tokenize and label one raw sample; None (counted) when it is not used."""
        try:
            checked = check_sample(
                key,
                members,
                self.settings,
                source=shard,
                counts=self.skipped,
                rng=lambda doc_id: self._rng("document", epoch, doc_id),
            )
            count_checked(checked, log, shard)
            if checked.skipped is None:
                self.read_stats.samples += 1
            if checked.prepared is None:
                return None
            prepared = checked.prepared
            pixels = self.image_transform(prepared.images)  # (t, c, h, w)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            log.skip("bad_sample", f"[{key}]: {error}")
            return None
        return Sample(prepared.input_ids, prepared.attention_mask, prepared.labels, pixels)


class SourceLoader:
    """Micro-batches of one source, built ahead (``prefetch`` batches deep) by ``config.num_workers`` workers.

    ``worker="process"`` builds them in forked worker processes, ``"thread"`` in background threads of this
    process. Reading, decoding and tokenizing is Python code that holds the GIL, so a thread takes its time from
    the training step's own Python work (and more threads add no speed); a process runs beside it. Both give the
    same batches in the same order: the workers run the same generators, and each batch travels with its worker's
    dataset position after it. Without ``fork`` (Windows) threads are used; with ``prefetch=0`` the batches are
    built in the training loop, in the same order. Several workers split the work as the module docstring says
    and take turns: batch ``k`` comes from worker ``k % num_workers``.

    ``pin_memory`` (see :func:`pin_memory_for`): a thread of this process copies each batch into page-locked
    memory ahead of the step, so that its copy to the GPU (``Batch.to``, non-blocking) runs asynchronously.
    """

    def __init__(
        self,
        dataset: SourceDataset,
        pad_id: int,
        prefetch: int = 2,
        worker: Literal["process", "thread"] = "thread",
        trim_padding: bool = False,
        pin_memory: bool = False,
    ) -> None:
        if worker not in ("process", "thread"):
            raise ValueError(f"worker must be 'process' or 'thread', got {worker!r}")
        self.dataset, self.pad_id, self.prefetch, self.worker = dataset, pad_id, prefetch, worker
        self.trim_padding, self.pin_memory = trim_padding, pin_memory
        self.config = dataset.config
        self.num_workers = self.config.num_workers
        # One worker reads the dataset itself (the single stream); more read views of it (SourceDataset.for_worker).
        self.datasets = (
            [dataset]
            if self.num_workers == 1
            else [dataset.for_worker(w, self.num_workers) for w in range(self.num_workers)]
        )
        self._producers: list[Any] = []
        self._iterator: Iterator[tuple[Batch, int, dict[str, Any]]] | None = None
        self._pinner: _Prefetcher | None = None
        self.state: dict[str, Any] = self._merged_state([d.state_dict() for d in self.datasets], 0)

    def _merged_state(self, states: list[dict[str, Any]], next_worker: int) -> dict[str, Any]:
        """The loader's state: one worker's dataset state as it is, or every worker's and whose turn is next."""
        if self.num_workers == 1:
            return states[0]
        return {"num_workers": self.num_workers, "next_worker": next_worker, "workers": states}

    def _rows(self, dataset: SourceDataset) -> Iterator[tuple[Sample, dict[str, Any]]]:
        """The dataset's samples, or packed rows of them (``pack``)."""
        if not self.config.pack:
            return iter(dataset)
        bos = getattr(dataset.tokenizer, "bos_token_id", None)
        return pack_samples(iter(dataset), self.config.row_length, self.pad_id, dataset.image_token_id, bos)

    def _batches(self, dataset: SourceDataset | None = None) -> Iterator[tuple[Batch, dict[str, Any]]]:
        """``(batch, dataset state after it)`` of one worker's stream (the first worker's by default)."""
        samples, state = [], None
        for sample, state in self._rows(dataset or self.datasets[0]):
            samples.append(sample)
            if len(samples) == self.config.batch_size:
                yield collate(samples, self.pad_id, self.trim_padding), state
                samples = []

    def _producer(self, index: int) -> Iterator[tuple[Batch, dict[str, Any]]]:
        dataset = self.datasets[index]
        if self.prefetch <= 0:
            return self._batches(dataset)
        if self.worker == "process" and ForkedIterator.available():
            # The training step is the critical path; the workers, ``prefetch`` batches ahead each, fill idle
            # time at a lower priority.
            name = "data worker" if self.num_workers == 1 else f"data worker {index}"
            make = functools.partial(self._batches, dataset)
            return ForkedIterator(make, self.prefetch, name, threads=1, niceness=_WORKER_NICENESS)
        return _Prefetcher(self._batches(dataset), self.prefetch)

    def _start(self) -> Iterator[tuple[Batch, int, dict[str, Any]]]:
        # Every worker is forked before the pinning thread starts (a fork copies only the forking thread).
        self._producers = [self._producer(w) for w in range(self.num_workers)]
        first = self.state["next_worker"] if self.num_workers > 1 else 0
        merged: Iterator[tuple[Batch, int, dict[str, Any]]] = _TakeTurns(self._producers, first)
        if self.pin_memory:
            pinned = ((pinned(batch), w, state) for batch, w, state in merged)
            if self.prefetch <= 0:
                return pinned
            self._pinner = _Prefetcher(pinned, self.prefetch)
            return self._pinner
        return merged

    def next_batch(self) -> Batch:
        if self._iterator is None:
            self._iterator = self._start()
        batch, worker, state = next(self._iterator)
        if self.num_workers == 1:
            self.state = state
        else:
            states = list(self.state["workers"])
            states[worker] = state
            self.state = self._merged_state(states, (worker + 1) % self.num_workers)
        return batch

    def close(self) -> None:
        """Stop the workers (if any); the loader cannot be used afterwards."""
        if self._pinner is not None:
            self._pinner.stop.set()  # first, so that it stops asking the workers for more
        for producer in self._producers:
            if isinstance(producer, _Prefetcher | ForkedIterator):
                producer.close()
        if self._pinner is not None:
            self._pinner.close()

    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch handed out (not after what the workers read ahead)."""
        return self.state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._iterator is not None:
            raise RuntimeError("load the loader state before drawing the first batch")
        saved = state.get("num_workers", 1)
        if saved != self.num_workers:
            raise ValueError(
                f"source {self.config.name!r}: the saved position is for num_workers={saved}, the config has "
                f"{self.num_workers}; resume with num_workers: {saved} (the workers split the samples by it)"
            )
        for dataset, worker_state in zip(self.datasets, state["workers"] if saved > 1 else [state]):
            dataset.load_state_dict(worker_state)
        self.state = state

    def counts(self) -> dict[str, int]:
        """Skip counts up to the last batch handed out (summed over the workers)."""
        return skip_counts(self.state)


def pin_memory_for(device: torch.device | str) -> bool:
    """Whether batches for ``device`` should be pinned: only for a CUDA device on a machine with CUDA."""
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def pinned(batch: Batch) -> Batch:
    """``batch`` with its tensors in page-locked memory (needs CUDA)."""
    return Batch(*(getattr(batch, f).pin_memory() for f in batch.__dataclass_fields__))


class _TakeTurns:
    """``(item, producer index, state)`` from ``producers`` in turn, starting with ``first``."""

    def __init__(self, producers: Sequence[Iterator[tuple[Batch, dict[str, Any]]]], first: int) -> None:
        self.producers, self.turn = list(producers), first

    def __iter__(self) -> Iterator[tuple[Batch, int, dict[str, Any]]]:
        return self

    def __next__(self) -> tuple[Batch, int, dict[str, Any]]:
        index = self.turn
        batch, state = next(self.producers[index])
        self.turn = (index + 1) % len(self.producers)
        return batch, index, state


def skip_counts(state: dict[str, Any]) -> dict[str, int]:
    """Skips recorded in a dataset state: unusable samples and files as ``read_<reason>`` (the reasons of
    :data:`flamingo.data.usable.REASONS`, which ``flamingo data validate`` reports as they are), bad images
    dropped from kept documents as ``image_<reason>``, and what the settings leave out under its own name
    (:data:`flamingo.data.usable.SETTINGS_REASONS`: ``no_supervised_tokens``, ``single_image_dropped``,
    ``no_images``, ``image_past_truncation``, ...)."""
    if "workers" in state:  # a loader with several workers: the sum of theirs
        total: Counter[str] = Counter()
        for worker_state in state["workers"]:
            total.update(skip_counts(worker_state))
        return dict(total)
    out = {f"read_{k}": v for k, v in state["read_stats"]["skipped"].items()}
    out |= {f"image_{k}": v for k, v in state["read_stats"]["images_dropped"].items()}
    return out | dict(state["skipped"])


class _Prefetcher:
    """``iterator``'s items, produced by a daemon thread up to ``depth`` ahead; its errors re-raised here.

    :meth:`close` stops the thread (it must not be left inside torch code when the interpreter exits).
    """

    _DONE = object()

    def __init__(self, iterator: Iterator[Any], depth: int) -> None:
        self.items: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, args=(iterator,), daemon=True)
        self.thread.start()

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, iterator: Iterator[Any]) -> None:
        try:
            for item in iterator:
                if not self._put((item, None)):
                    return
        except BaseException as error:  # handed to the consumer, which knows what to do with it
            self._put((self._DONE, error))
            return
        self._put((self._DONE, None))

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        item, error = self.items.get()
        if error is not None:
            raise error
        if item is self._DONE:
            raise StopIteration
        return item

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


_WORKER_NICENESS = 10
"""Added to a data worker process's niceness (lower CPU priority than the training step)."""


@dataclass
class SourceBatches:
    """What one source contributes to an optimizer step: its micro-batches and loss weight."""

    name: str
    loss_weight: float
    micro_batches: list[Batch]


class Mixture:
    """Several sources mixed per optimizer step.

    ``mixing="all"`` (OpenFlamingo): every step takes ``accum`` micro-batches from every source. ``"sample"``:
    every step takes them from one source drawn by ``sample_weight`` with a seed of ``(seed, step)``, so all
    ranks and a resumed run draw the same source.
    """

    def __init__(self, loaders: Sequence[SourceLoader], mixing: str = "all", seed: int = 0) -> None:
        if not loaders:
            raise ValueError("the data mixture has no source: give at least one source with shards")
        names = [loader.config.name for loader in loaders]
        if len(set(names)) != len(names):
            raise ValueError(f"data source names must be unique, got {names}")
        if mixing not in ("all", "sample"):
            raise ValueError(f"data.mixing must be 'all' or 'sample', got {mixing!r}")
        self.loaders, self.mixing, self.seed = list(loaders), mixing, seed

    def next_step(self, step: int, accum: int) -> list[SourceBatches]:
        chosen = self.loaders
        if self.mixing == "sample":
            weights = [loader.config.sample_weight for loader in self.loaders]
            rng = random.Random(f"{self.seed}:mixture:{step}")
            chosen = rng.choices(self.loaders, weights=weights, k=1)
        return [
            SourceBatches(
                loader.config.name,
                loader.config.loss_weight,
                [loader.next_batch() for _ in range(accum)],
            )
            for loader in chosen
        ]

    def state_dict(self) -> dict[str, Any]:
        return {loader.config.name: loader.state_dict() for loader in self.loaders}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for loader in self.loaders:
            if loader.config.name not in state:
                raise ValueError(f"the saved data position has no source {loader.config.name!r}")
            loader.load_state_dict(state[loader.config.name])

    def counts(self) -> dict[str, dict[str, int]]:
        return {loader.config.name: loader.counts() for loader in self.loaders}

    def close(self) -> None:
        for loader in self.loaders:
            loader.close()
