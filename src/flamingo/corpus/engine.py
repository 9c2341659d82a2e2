"""Engines that run the builder's stages over input files: local processes or Ray Data.

Each input file is one shard (``shard-00000`` for the first input, ...). A build has five phases:

0. **read** (parallel, per shard): read (with language identification) -> language filter. Only the slim
   line records (site, hashes of the text entries) go to the driver, which finds the entries repeated on
   many pages of one site (``lines.plan_line_dedup``: counts, so the order of the shards does not matter).
1. **prepare** (parallel, per shard): remove the repeated lines -> text quality rules -> fetch -> per-image
   filters and hashes -> decontaminate. Text filters run before the fetch, so no image of a dropped page is
   downloaded. Documents come back without image bytes (those are stored under ``images/`` by content hash).
2. **plan dedup** (driver, serial): the slim hash records ``(shard, doc, image, sha256, pHash)`` of all
   shards are sorted into input order and run through ONE ``DedupIndex``; the first occurrence is kept.
   Because the order is fixed by the inputs, not by which worker finished first, the local and Ray
   engines (and any number of workers) drop exactly the same images.
3. **finish** (parallel, per shard): apply the dedup decisions -> faces -> NSFW -> interleave -> write.

With Ray, phase 1 output stays in the object store (a materialised dataset); only the hash records go
to the driver, and the decisions go back to the workers with the finish tasks. The global index is the
one thing that is not distributed: at MMC4 scale (~571M images) it needs a machine with tens of GB of
memory, or a hash-partitioned exact pass plus a banded pHash pass (``dedup.PHashIndex``'s bands are
natural partition keys).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from flamingo.corpus.config import BuildConfig, FilterConfig
from flamingo.corpus.dedup import DedupIndex, PHashIndex, build_eval_index, decontaminate, image_key
from flamingo.corpus.document import WebDocument
from flamingo.corpus.faces import FaceDetector, filter_faces
from flamingo.corpus.fetch import fetch_documents
from flamingo.corpus.filters import filter_images, hash_images
from flamingo.corpus.interleave import interleave_documents
from flamingo.corpus.language import filter_language
from flamingo.corpus.lines import (
    LineRecord,
    RepeatedLines,
    apply_line_dedup,
    for_documents,
    line_records,
    plan_line_dedup,
)
from flamingo.corpus.nsfw import NSFWScorer, PromptNSFWScorer, filter_nsfw
from flamingo.corpus.quality import filter_quality
from flamingo.corpus.read import ReadCounts, input_kind, read_input
from flamingo.corpus.stats import BuildStats, Laps
from flamingo.corpus.write import write_shard
from flamingo.data.remote import (
    OBJECT_STORES,
    filesystem,
    is_url,
    join_url,
    list_urls,
    remove_urls,
    upload_file,
)
from flamingo.errors import MissingFileError, UsageError

logger = logging.getLogger(__name__)

HashRecord = tuple[int, int, int, str, str, str]  # (shard, doc position, image index, name, sha256, phash)
# Per shard: (doc position, image index) -> (drop reason, name of the kept original). Positions, not ids:
# ids need only be unique within one input file.
Decisions = dict[tuple[int, int], tuple[str, str]]


class Embedder(Protocol):
    """A CLIP-like model: images and texts to embeddings in one space."""

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """Embeddings, shape (n, d)."""
        ...

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Embeddings, shape (n, d)."""
        ...


@dataclass
class ShardTask:
    """One input file and where its outputs go."""

    index: int
    path: str
    out_dir: str
    config: BuildConfig
    upload_to: str | None = None
    """Object-storage folder (``s3://bucket/prefix``) the finished tars go to; None keeps them in ``out_dir``."""

    @property
    def name(self) -> str:
        """The shard name used for the manifest and the output tars."""
        return f"shard-{self.index:05d}"


@dataclass
class Models:
    """The scorers handed to every worker (pickled once per task)."""

    embedder: Embedder
    nsfw_scorer: NSFWScorer | None = None
    face_detector: FaceDetector | None = None
    eval_index: PHashIndex | None = None


@dataclass
class BuildResult:
    """What ``run_pipeline`` produced."""

    stats: BuildStats
    shard_paths: list[Path] = field(default_factory=list)


def read_shard(task: ShardTask) -> tuple[list[WebDocument], BuildStats]:
    """Phase 0: read one input file and keep the documents in the configured languages."""
    cfg = task.config
    stats = BuildStats(shards=1)
    lap = Laps()
    counts = ReadCounts()
    docs = read_input(task.path, cfg.read, counts)
    stats.record_read(docs, counts, seconds=lap())
    kept, dropped = filter_language(docs, cfg.text)
    stats.record_drops("language", docs, kept, dropped, seconds=lap())
    return kept, stats


def plan_lines(records: Sequence[LineRecord], task: ShardTask) -> RepeatedLines:
    """The entries to remove, per site, over the whole corpus (``text.line_dedup_min_pages``)."""
    return plan_line_dedup(records, task.config.text.line_dedup_min_pages)


def prepare_shard(
    task: ShardTask, docs: list[WebDocument], repeated: RepeatedLines, eval_index: PHashIndex | None
) -> tuple[list[WebDocument], BuildStats]:
    """Phase 1: remove repeated lines, apply the quality rules, fetch, filter and hash one shard's documents."""
    cfg = task.config
    stats = BuildStats()
    lap = Laps()
    cleaned, emptied = apply_line_dedup(docs, for_documents(repeated, docs))
    stats.record_drops("lines", docs, cleaned, emptied, seconds=lap())
    docs, dropped = filter_quality(cleaned, cfg.text)
    stats.record_drops("quality", cleaned, docs, dropped, seconds=lap())
    fetched = fetch_documents(docs, cfg.fetch, task.out_dir, task.name, cfg.progress)
    stats.record("fetch", docs, fetched, seconds=lap())
    filtered = filter_images(fetched, cfg.filter)
    if cfg.filter.dedup_perceptual or eval_index is not None:  # the only readers of perceptual hashes
        filtered = hash_images(filtered)
    stats.record("filter", fetched, filtered, seconds=lap())
    if eval_index is not None:
        clean = decontaminate(filtered, eval_index)
        stats.record("decontaminate", filtered, clean, seconds=lap())
        filtered = clean
    return [doc.release_bytes() for doc in filtered], stats


def hash_records(shard: int, docs: list[WebDocument]) -> list[HashRecord]:
    """The slim records the dedup planner needs, in page order."""
    return [
        (shard, d, i, f"shard-{shard:05d}/{image_key(doc, i)}", im.sha256 or "", im.phash or "")
        for d, doc in enumerate(docs)
        for i, im in enumerate(doc.images)
        if im.alive
    ]


def plan_dedup(records: Sequence[HashRecord], config: FilterConfig) -> dict[int, Decisions]:
    """Which images are later copies, over the whole corpus, keeping the first in input order; by shard."""
    if not (config.dedup_exact or config.dedup_perceptual):
        return {}
    index = DedupIndex(
        config.phash_max_distance, exact=config.dedup_exact, perceptual=config.dedup_perceptual
    )
    decisions: dict[int, Decisions] = {}
    for shard, doc, img, name, sha, phash in sorted(records):
        result = index.check_and_add(sha or None, phash or None, name)
        if result.reason is not None:
            decisions.setdefault(shard, {})[(doc, img)] = (result.reason, result.original or "")
    return decisions


def apply_dedup(docs: list[WebDocument], decisions: Decisions) -> list[WebDocument]:
    """Drop the images named in ``decisions`` (keyed by document position and image index)."""
    out = []
    for d, doc in enumerate(docs):
        images = []
        for i, image in enumerate(doc.images):
            decision = decisions.get((d, i)) if image.alive else None
            if decision is not None:
                image = image.annotate(duplicate_of=decision[1]).drop(decision[0])
            images.append(image)
        out.append(doc.with_images(images))
    return out


def publish_shards(paths: Sequence[Path | str], folder: str, shard: str) -> list[Path | str]:
    """Upload one input's finished tars to ``<folder>/shards/`` and delete the local copies; the URLs.

    An object appears only when its upload is complete, so readers never see half a shard. Tars of this input
    left in the store by an earlier build and not written again are deleted, as :func:`write_shard` does
    locally.
    """
    urls = [upload_file(path, join_url(folder, "shards", Path(path).name)) for path in paths]
    for path in paths:
        Path(path).unlink()
    stale = [url for url in list_urls(join_url(folder, "shards", f"{shard}-*.tar")) if url not in urls]
    remove_urls(stale)
    return list(urls)


def screen_shard(
    task: ShardTask, docs: list[WebDocument], decisions: Decisions, models: Models
) -> tuple[list[WebDocument], BuildStats]:
    """Phase 3a (CPU): apply the dedup decisions and the face filter to one shard."""
    stats = BuildStats()
    lap = Laps()
    deduped = apply_dedup(docs, decisions)
    stats.record("dedup", docs, deduped, seconds=lap())
    faced = filter_faces(deduped, task.config.filter, models.face_detector)
    stats.record("faces", deduped, faced, seconds=lap())
    return faced, stats


def clip_shard(
    task: ShardTask, docs: list[WebDocument], models: Models
) -> tuple[list[WebDocument], BuildStats]:
    """Phase 3b (the CLIP model): NSFW scores and image-sentence placement for one shard's documents."""
    cfg = task.config
    stats = BuildStats()
    lap = Laps()
    if models.nsfw_scorer is not None:
        safe = filter_nsfw(docs, models.nsfw_scorer, cfg.filter, cfg.interleave.batch_size)
        stats.record("nsfw", docs, safe, seconds=lap())
        docs = safe
    embedder = models.embedder
    placed = interleave_documents(docs, embedder.embed_images, embedder.embed_texts, cfg.interleave)
    stats.record("interleave", docs, placed, doc_reason="no_image_left", seconds=lap())
    return placed, stats


def write_placed(task: ShardTask, placed: list[WebDocument]) -> tuple[BuildStats, list[Path | str]]:
    """Phase 3c (CPU): write one shard's placed documents as tars (and upload them, for an object-store output)."""
    stats = BuildStats()
    lap = Laps()
    paths: list[Path | str] = list(
        write_shard(placed, Path(task.out_dir) / "shards", task.name, task.config.max_documents_per_tar)
    )
    if task.upload_to is not None:
        paths = publish_shards(paths, task.upload_to, task.name)
    stats.record("write", placed, placed, seconds=lap())
    stats.record_output(placed)
    return stats, paths


def finish_shard(
    task: ShardTask, docs: list[WebDocument], decisions: Decisions, models: Models
) -> tuple[BuildStats, list[Path | str]]:
    """Phase 3: dedup decisions, faces, NSFW, interleave and write one shard."""
    screened, stats = screen_shard(task, docs, decisions, models)
    placed, clip_stats = clip_shard(task, screened, models)
    write_stats, paths = write_placed(task, placed)
    stats.merge(clip_stats)
    stats.merge(write_stats)
    return stats, paths


def _pool(workers: int, total: int) -> ProcessPoolExecutor | None:
    """Worker processes for a local run (None for one worker), started once and shared by its phases.

    "spawn", not Linux's default "fork": a child forked after torch or OpenMP started their thread pools can
    deadlock in its first parallel op (seen in CI: a worker hung inside layer_norm).
    """
    if workers == 1:
        return None
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=min(workers, max(total, 1)), mp_context=context)


def _map(fn: Any, pool: ProcessPoolExecutor | None, progress: bool, desc: str, *iterables: Any) -> list[Any]:
    """``map`` in this process (no pool) or in the pool, results in input order."""
    total = len(iterables[0])
    results = map(fn, *iterables) if pool is None else pool.map(fn, *iterables)
    return list(tqdm(results, total=total, desc=desc, disable=not progress))


def _run_local(tasks: list[ShardTask], models: Models, workers: int, progress: bool) -> BuildResult:
    pool = _pool(workers, len(tasks))
    try:
        read = _map(read_shard, pool, progress, "read", tasks)
        repeated = plan_lines([r for docs, _ in read for r in line_records(docs)], tasks[0])
        prepared = _map(
            prepare_shard,
            pool,
            progress,
            "prepare",
            tasks,
            [docs for docs, _ in read],
            [for_documents(repeated, docs) for docs, _ in read],
            [models.eval_index] * len(tasks),
        )
        records = [r for task, (docs, _) in zip(tasks, prepared) for r in hash_records(task.index, docs)]
        decisions = plan_dedup(records, tasks[0].config.filter)
        finished = _map(
            finish_shard,
            pool,
            progress,
            "finish",
            tasks,
            [docs for docs, _ in prepared],
            [decisions.get(t.index, {}) for t in tasks],
            [models] * len(tasks),
        )
    finally:
        if pool is not None:
            pool.shutdown()
    stats = BuildStats()
    for _, shard_stats in read + prepared:
        stats.merge(shard_stats)
    paths: list[Path | str] = []
    for shard_stats, shard_paths in finished:
        stats.merge(shard_stats)
        paths += shard_paths
    return BuildResult(stats, paths)


def _check_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[str]:
    paths = [str(p) for p in inputs]
    if not paths:
        raise ValueError("run_pipeline: no input files; pass WARC, HTML or JSONL files")
    for p in paths:
        if not Path(p).is_file():
            raise MissingFileError(f"run_pipeline: input {p} does not exist or is not a file")
        input_kind(p)
    return paths


def _default_models(
    config: BuildConfig,
    embedder: Embedder | None,
    nsfw_scorer: NSFWScorer | None,
    face_detector: FaceDetector | None,
) -> Models:
    if embedder is None or not (
        callable(getattr(embedder, "embed_images", None)) and callable(getattr(embedder, "embed_texts", None))
    ):
        raise ValueError(
            "run_pipeline: embedder must have embed_images(list[PIL.Image]) and embed_texts(list[str]) "
            "returning (n, d) arrays (a CLIP-like model); it places images among sentences"
        )
    if nsfw_scorer is None:
        nsfw_scorer = PromptNSFWScorer(embedder.embed_images, embedder.embed_texts)
    folders = config.filter.decontaminate_folders
    eval_index = (
        build_eval_index(folders, config.filter.decontaminate_max_distance, config.fetch.max_pixels)
        if folders
        else None
    )
    return Models(embedder, nsfw_scorer, face_detector, eval_index)


def run_pipeline(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: BuildConfig | None = None,
    engine: str = "local",
    workers: int = 1,
    embedder: Embedder | None = None,
    nsfw_scorer: NSFWScorer | None = None,
    face_detector: FaceDetector | None = None,
) -> BuildResult:
    """Build interleaved shards from ``inputs`` into ``out_dir`` (``shards/``, ``stats.json``, ``report.md``).

    Input ``i`` becomes ``shard-<i>``; keep the input order when resuming an interrupted build, so the
    per-shard fetch manifests are found again. ``nsfw_scorer`` defaults to a zero-shot scorer on
    ``embedder``; ``face_detector`` to ``filter.face_backend``.

    ``out_dir`` may be an object-storage folder (``s3://bucket/prefix``, ``gs://...``): the build then works in
    a local temporary folder, uploads each tar as soon as it is complete and ``config.json``, ``stats.json`` and
    ``report.md`` at the end, and deletes the temporary folder (fetched images and manifests included, so an
    interrupted remote build starts its fetches again).
    """
    config = config or BuildConfig()
    if engine not in ("local", "ray"):
        raise ValueError(f"run_pipeline: engine={engine!r}; use 'local' or 'ray'")
    if workers < 1:
        raise ValueError(f"run_pipeline: workers={workers}; use 1 or more")
    paths = _check_inputs(inputs)
    remote = _remote_folder(out_dir)
    models = _default_models(config, embedder, nsfw_scorer, face_detector)
    out = Path(tempfile.mkdtemp(prefix="flamingo-build-")) if remote else Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
        tasks = [ShardTask(i, p, str(out), config, remote) for i, p in enumerate(paths)]
        if engine == "ray":
            from flamingo.corpus.ray_engine import run_ray

            result = run_ray(tasks, models, workers, config.progress)
        else:
            result = _run_local(tasks, models, workers, config.progress)
        result.stats.save(out)
        if remote is not None:
            for name in ("config.json", "stats.json", "report.md"):
                upload_file(out / name, join_url(remote, name))
    finally:
        if remote is not None:
            shutil.rmtree(out, ignore_errors=True)
    logger.info("build finished: %s", json.dumps(result.stats.to_dict()["stages"].get("write", {})))
    return result


def _remote_folder(out_dir: str | os.PathLike[str]) -> str | None:
    """``out_dir`` when it is an object-storage URL (its storage package checked now, before any work), else
    None; any other URL is refused."""
    if not is_url(out_dir):
        return None
    out = str(out_dir)
    scheme = out.split("://", 1)[0].lower() if "://" in out else ""
    if scheme not in OBJECT_STORES:
        raise UsageError(f"--out {out}: shards can be written to a local folder or to s3:// or gs:// storage")
    filesystem(out)
    return out.rstrip("/")


def dumps(value: Any) -> bytes:
    """Pickle for passing documents through Ray Data columns."""
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
