"""The Ray Data engine: the same phase functions as the local engine, as ``map_batches`` steps.

Rows are one shard each: ``{"index", "task", "docs", "stats"}`` with pickled values (documents carry no
image bytes at this point, so rows are small). See ``engine.py`` for how global dedup stays exact: only
the hash records come to the driver, which plans the drops in input order and sends them back.

The finish phase runs in three steps so that the CLIP model sits only where it is needed: dedup decisions and
faces (CPU tasks), then NSFW and placement in a pool of ``ClipStage`` actors (one per GPU when the cluster has
GPUs, else CPU actors), each loading the model once and embedding a shard's images and sentences across its
pages in batches of ``interleave.batch_size``, then writing (CPU tasks).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flamingo.corpus.engine import (
    BuildResult,
    Decisions,
    Models,
    ShardTask,
    clip_shard,
    dumps,
    hash_records,
    plan_dedup,
    plan_lines,
    prepare_shard,
    read_shard,
    screen_shard,
    write_placed,
)
from flamingo.corpus.lines import RepeatedLines, for_documents, line_records
from flamingo.corpus.stats import BuildStats

logger = logging.getLogger(__name__)


def _objects(values: list[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _fit_threads_to_task() -> None:
    """Keep a task inside its one-CPU reservation: Ray sets OMP_NUM_THREADS for the task, but OpenCV (face
    detection) and torch (CLIP) size their own thread pools from the machine and would oversubscribe it."""
    threads = int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    torch.set_num_threads(threads)
    with contextlib.suppress(ImportError):
        import cv2

        cv2.setNumThreads(threads)


def _read_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    docs, stats = [], []
    for raw in batch["task"]:
        shard_docs, shard_stats = read_shard(pickle.loads(raw))
        docs.append(dumps(shard_docs))
        stats.append(dumps(shard_stats))
    return {"index": batch["index"], "task": batch["task"], "docs": _objects(docs), "stats": _objects(stats)}


def _line_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    records = [r for raw in batch["docs"] for r in line_records(pickle.loads(raw))]
    return {"record": _objects([dumps(r) for r in records])}


def _prepare_batch(
    batch: dict[str, np.ndarray], repeated: RepeatedLines, models: Models
) -> dict[str, np.ndarray]:
    _fit_threads_to_task()
    docs, stats = [], []
    for raw_task, raw_docs in zip(batch["task"], batch["docs"]):
        read_docs = pickle.loads(raw_docs)
        shard_docs, shard_stats = prepare_shard(
            pickle.loads(raw_task), read_docs, for_documents(repeated, read_docs), models.eval_index
        )
        docs.append(dumps(shard_docs))
        stats.append(dumps(shard_stats))
    return {"index": batch["index"], "task": batch["task"], "docs": _objects(docs), "stats": _objects(stats)}


def _hash_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    records = [
        r
        for index, raw in zip(batch["index"], batch["docs"])
        for r in hash_records(int(index), pickle.loads(raw))
    ]
    return {"record": _objects([dumps(r) for r in records])}


def _screen_batch(
    batch: dict[str, np.ndarray], decisions: dict[int, Decisions], models: Models
) -> dict[str, np.ndarray]:
    _fit_threads_to_task()
    docs, stats = [], []
    for index, raw_task, raw_docs in zip(batch["index"], batch["task"], batch["docs"]):
        shard_docs, shard_stats = screen_shard(
            pickle.loads(raw_task), pickle.loads(raw_docs), decisions.get(int(index), {}), models
        )
        docs.append(dumps(shard_docs))
        stats.append(dumps(shard_stats))
    return {"index": batch["index"], "task": batch["task"], "docs": _objects(docs), "stats": _objects(stats)}


class ClipStage:
    """A Ray actor for the CLIP stage: loads the model once, then runs NSFW and placement on shard rows.

    Rows are ``{"index", "task", "docs", "stats"}`` (pickled); the stage's counts are added to ``stats``.
    """

    def __init__(self, models: Models) -> None:
        _fit_threads_to_task()
        self.models = models
        load = getattr(models.embedder, "load", None)
        if callable(load):  # now, not on the first batch: the actor is ready when Ray Data sends rows
            load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """NSFW and placement for each shard in ``batch``."""
        docs, stats = [], []
        for raw_task, raw_docs, raw_stats in zip(batch["task"], batch["docs"], batch["stats"]):
            shard_stats = pickle.loads(raw_stats)
            placed, clip_stats = clip_shard(pickle.loads(raw_task), pickle.loads(raw_docs), self.models)
            shard_stats.merge(clip_stats)
            docs.append(dumps(placed))
            stats.append(dumps(shard_stats))
        return {
            "index": batch["index"],
            "task": batch["task"],
            "docs": _objects(docs),
            "stats": _objects(stats),
        }


def clip_actor_options(cluster: dict[str, float], workers: int, actors: int = 0) -> dict[str, Any]:
    """``map_batches`` options for the ``ClipStage`` pool given the cluster's resources (``ray.cluster_resources()``).

    With GPUs: one actor per GPU, each reserving one (``actors`` caps the count). Without: ``actors`` CPU actors,
    or ``workers`` when 0, leaving one of the cluster's CPUs to the screening and writing tasks. Each actor
    reserves one CPU (with a GPU, for image decoding and preprocessing), except on a one-CPU cluster.
    """
    gpus = int(cluster.get("GPU", 0))
    if gpus > 0:
        n = min(gpus, actors) if actors else gpus
        return {"concurrency": n, "num_gpus": 1, "num_cpus": 1}
    # CPU actors hold their CPU for the whole stage: one is left free for the tasks before and after them. On a
    # one-CPU cluster the single actor reserves none, else the screening tasks could never start.
    cpus = int(cluster.get("CPU", 1))
    return {
        "concurrency": min(actors or workers, max(1, cpus - 1)),
        "num_gpus": 0,
        "num_cpus": 1 if cpus > 1 else 0,
    }


def _write_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    stats, paths = [], []
    for raw_task, raw_docs, raw_stats in zip(batch["task"], batch["docs"], batch["stats"]):
        shard_stats = pickle.loads(raw_stats)
        write_stats, shard_paths = write_placed(pickle.loads(raw_task), pickle.loads(raw_docs))
        shard_stats.merge(write_stats)
        stats.append(dumps(shard_stats))
        paths.append(dumps([str(p) for p in shard_paths]))
    return {"index": batch["index"], "stats": _objects(stats), "paths": _objects(paths)}


def _ensure_ray(workers: int) -> bool:
    """Start a local Ray if none is running (returns True when this call started it)."""
    import ray

    if ray.is_initialized():
        return False
    import flamingo

    # Workers must import flamingo even when it is not installed (a source checkout on PYTHONPATH).
    src = str(Path(flamingo.__file__).resolve().parents[1])
    ray.init(num_cpus=workers, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": src}})
    return True


def run_ray(tasks: list[ShardTask], models: Models, workers: int, progress: bool) -> BuildResult:
    """Run the three phases with Ray Data; same outputs as the local engine."""
    import ray
    import ray.data

    started = _ensure_ray(workers)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = progress
        items = [{"index": t.index, "task": dumps(t)} for t in tasks]
        # One block per input file and one CPU per task, so `workers` files are processed at once.
        per_task = {"batch_size": 1, "num_cpus": 1, "concurrency": workers}
        read = (
            ray.data.from_items(items, override_num_blocks=len(items))
            .map_batches(_read_batch, **per_task)
            .materialize()
        )
        line_rows = read.map_batches(_line_batch, batch_size=1).take_all()
        repeated = plan_lines([pickle.loads(row["record"]) for row in line_rows], tasks[0])
        prepared = read.map_batches(
            _prepare_batch, fn_kwargs={"repeated": repeated, "models": models}, **per_task
        ).materialize()
        records = [
            pickle.loads(row["record"]) for row in prepared.map_batches(_hash_batch, batch_size=1).take_all()
        ]
        decisions = plan_dedup(records, tasks[0].config.filter)
        clip_options = clip_actor_options(
            ray.cluster_resources(), workers, tasks[0].config.interleave.clip_actors
        )
        logger.info("CLIP stage: %s", clip_options)
        finished = (
            prepared.map_batches(
                _screen_batch, fn_kwargs={"decisions": decisions, "models": models}, **per_task
            )
            .map_batches(ClipStage, fn_constructor_kwargs={"models": models}, batch_size=1, **clip_options)
            .map_batches(_write_batch, **per_task)
            .take_all()
        )
        stats = BuildStats()
        for dataset in (read, prepared):
            for row in sorted(
                dataset.select_columns(["index", "stats"]).take_all(), key=lambda r: r["index"]
            ):
                stats.merge(pickle.loads(row["stats"]))
        paths: list[Path] = []
        for row in sorted(finished, key=lambda r: r["index"]):
            stats.merge(pickle.loads(row["stats"]))
            paths += [Path(p) for p in pickle.loads(row["paths"])]
        return BuildResult(stats, paths)
    finally:
        if started:
            ray.shutdown()
