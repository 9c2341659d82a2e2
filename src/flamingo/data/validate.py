"""Validation reports and statistics of shards (library side of ``flamingo data validate`` / ``stats``).

Both walk the tar members directly, so that a report can name every problem of every sample. Each sample goes
through :func:`flamingo.data.usable.check_sample`, the check the trainer's loader applies, so a report counts
exactly the samples training skips, under the same reasons; with the settings of a training data source
(:class:`~flamingo.data.usable.SampleSettings`, tokenizer included) it also counts what those settings leave
out. Without them a sample is a pair when it has an image member ``<key>.jpg`` (or png...), a conversation
when its JSON says ``flamingo-sft/1``, else an interleaved document (ours or OpenFlamingo's MMC4 shards).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from flamingo.data.mmc4 import check_mmc4_dict, is_mmc4_dict
from flamingo.data.paths import SHARD_SUFFIXES, PathSpec, expand_paths
from flamingo.data.remote import RetryPolicy
from flamingo.data.schema import (
    IMAGE_EXTENSIONS,
    ImageTextPair,
    InterleavedDocument,
    SchemaIssue,
    check_document_dict,
)
from flamingo.data.sft import Conversation, iter_jsonl_samples
from flamingo.data.shards import FileReadLog, ReadStats, iter_tar_samples
from flamingo.data.usable import SampleSettings, check_sample

_FILE_FIXES = {
    "missing_file": "check the path, glob or brace pattern",
    "unreadable_file": "the file is not a (gzipped) tar; rewrite it with InterleavedShardWriter",
    "truncated_tar": "the tar ends early (interrupted copy or write); copy or rebuild the shard",
    "read_failed": "the transfer kept failing; check the network, the store or the pipe's command, or raise retries",
}
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


@dataclass(frozen=True)
class ValidationIssue:
    """One problem: where (file, key, field), what, and how to fix it."""

    file: str
    key: str
    field: str
    message: str
    fix: str
    reason: str = "schema_error"
    """What the problem is counted under (:data:`flamingo.data.usable.REASONS`)."""

    def describe(self) -> str:
        return (
            f"{self.file} [{self.key}] field '{self.field}': {self.message} ({self.reason}). Fix: {self.fix}"
        )


@dataclass
class ValidationReport:
    """Everything :func:`validate_shards` found; ``ok`` is True when nothing is wrong."""

    files: list[str] = field(default_factory=list)
    samples: int = 0
    """Raw samples (keys of the tars, lines of JSONL files) seen."""
    usable: int = 0
    """Samples neither skipped nor left out by the settings."""
    documents: int = 0
    """Interleaved documents whose JSON follows the schema (their images may still be bad)."""
    images: int = 0
    sentences: int = 0
    pairs: int = 0
    """Image-text pairs whose JSON follows the schema."""
    conversations: int = 0
    """Conversations whose JSON follows the schema."""
    undecodable_images: int = 0
    images_per_document: Counter[int] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    """Unusable samples (and whole files) per reason: what the trainer's loader counts as ``read_<reason>``."""
    images_dropped: Counter[str] = field(default_factory=Counter)
    """Bad images removed from kept documents (``drop_bad_images``), per reason."""
    left_out: Counter[str] = field(default_factory=Counter)
    """Sound samples and images the training settings leave out (only with a tokenizer), per reason."""
    issues: list[ValidationIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "files": self.files,
            "samples": self.samples,
            "usable": self.usable,
            "documents": self.documents,
            "images": self.images,
            "sentences": self.sentences,
            "pairs": self.pairs,
            "conversations": self.conversations,
            "undecodable_images": self.undecodable_images,
            "images_per_document": {str(k): v for k, v in sorted(self.images_per_document.items())},
            "skipped": dict(sorted(self.skipped.items())),
            "images_dropped": dict(sorted(self.images_dropped.items())),
            "left_out": dict(sorted(self.left_out.items())),
            "issues": [issue.__dict__ for issue in self.issues],
        }

    def to_text(self, max_issues: int = 50) -> str:
        """A human-readable report: counts, the images-per-document histogram, then the issues."""
        lines = [
            f"{'OK' if self.ok else 'PROBLEMS FOUND'}: {len(self.files)} file(s), {self.samples} sample(s), "
            f"{self.usable} usable",
            f"  documents {self.documents}, images {self.images}, sentences {self.sentences}, pairs {self.pairs}, "
            f"conversations {self.conversations}",
            f"  undecodable images {self.undecodable_images}, issues {len(self.issues)}",
        ]
        for title, counts in (
            ("skipped", self.skipped),
            ("images dropped", self.images_dropped),
            ("left out by the training settings", self.left_out),
        ):
            if counts:
                lines.append(f"  {title}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        if self.images_per_document:
            lines.append("  images per document:")
            width = max(self.images_per_document.values())
            for count, docs in sorted(self.images_per_document.items()):
                bar = "#" * max(1, round(30 * docs / width))
                lines.append(f"    {count:>3}: {docs:>8} {bar}")
        for issue in self.issues[:max_issues]:
            lines.append(f"  - {issue.describe()}")
        if len(self.issues) > max_issues:
            lines.append(f"  ... and {len(self.issues) - max_issues} more issues")
        return "\n".join(lines)


def _load_json(raw: bytes | None) -> tuple[Any, str | None]:
    if raw is None:
        return None, None
    try:
        return json.loads(raw), None
    except (ValueError, RecursionError) as error:
        return None, str(error)


class _Validator:
    def __init__(self, settings: SampleSettings, retry: RetryPolicy | None = None):
        self.report = ValidationReport()
        self.settings = settings
        self.retry = retry

    def issue(self, file: str, key: str, problem: SchemaIssue) -> None:
        self.report.issues.append(
            ValidationIssue(file, key, problem.field, problem.message, problem.fix, problem.reason)
        )

    def file(self, path: Path | str) -> None:
        self.report.files.append(str(path))
        stats = ReadStats()
        log = FileReadLog(path, stats)
        jsonl = str(path).endswith(".jsonl")
        raw = iter_jsonl_samples(path, log) if jsonl else iter_tar_samples(path, log, self.retry)
        for key, members in raw:
            self.sample(str(path), key, members)
        for reason, count in stats.skipped.items():
            self.report.skipped[reason] += count
            message = f"{reason} ({count} time(s))"
            fix = _FILE_FIXES.get(reason, "rebuild it")
            self.issue(str(path), "<file>", SchemaIssue("<file>", message, fix, reason))

    def sample(self, file: str, key: str, members: dict[str, bytes]) -> None:
        report = self.report
        checked = check_sample(key, members, self.settings, source=file, counts=report.left_out)
        report.samples += 1
        for problem in checked.problems:
            self.issue(file, key, problem)
        report.undecodable_images += sum(problem.reason == "corrupt_image" for problem in checked.problems)
        if checked.skipped is not None:
            report.skipped[checked.skipped.reason] += 1
        for problem in checked.dropped:
            report.images_dropped[problem.reason] += 1
        report.usable += checked.usable
        sample = checked.sample
        if isinstance(sample, InterleavedDocument):
            num_images = len(sample.image_info) + len(checked.dropped)
            report.documents += 1
            report.sentences += len(sample.text_list)
            report.images += num_images
            report.images_per_document[num_images] += 1
        elif isinstance(sample, ImageTextPair):
            report.pairs += 1
        elif isinstance(sample, Conversation):
            report.conversations += 1


def validate_shards(
    paths: PathSpec,
    check_images: bool = True,
    settings: SampleSettings | None = None,
    retry: RetryPolicy | None = None,
) -> ValidationReport:
    """Check every sample of the shards named by ``paths`` (files, globs, brace patterns, folders).

    Each sample goes through :func:`flamingo.data.usable.check_sample` with ``settings`` (default: kind
    guessed per sample, structure only); pass a training data source's settings
    (:func:`flamingo.data.loader.sample_settings`) to count what its loader would skip and leave out. With
    ``check_images`` every image is decoded. ``.jsonl`` files are read as instruction conversations. ``retry``:
    how remote shards are retried after a transient failure (default :class:`~flamingo.data.remote.RetryPolicy`).
    """
    settings = settings if settings is not None else SampleSettings()
    if not check_images:
        settings = replace(settings, verify_images=False)
    validator = _Validator(settings, retry)
    suffixes = (*SHARD_SUFFIXES, ".jsonl") if settings.kind == "sft" else SHARD_SUFFIXES
    for path in expand_paths(paths, suffixes):
        validator.file(path)
    return validator.report


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    points = np.quantile(np.asarray(values, dtype=np.float64), QUANTILES)
    return {f"p{round(q * 100)}": round(float(v), 6) for q, v in zip(QUANTILES, points)}


def _count_sample(
    members: dict[str, bytes], counts: Counter[str], histogram: Counter[int], sims: list[float]
) -> None:
    data, _ = _load_json(members.get("json"))
    if isinstance(data, dict) and "text_list" in data:
        if (check_mmc4_dict if is_mmc4_dict(data) else check_document_dict)(data):
            counts["invalid_documents"] += 1
            return
        counts["documents"] += 1
        counts["sentences"] += len(data["text_list"])
        counts["characters"] += sum(len(sentence) for sentence in data["text_list"])
        counts["images"] += len(data["image_info"])
        histogram[len(data["image_info"])] += 1
        sims.extend(float(info.get("matched_sim", 0.0)) for info in data["image_info"])
    elif any(ext in members for ext in IMAGE_EXTENSIONS):
        caption = members["txt"].decode("utf-8", "replace") if "txt" in members else None
        if caption is None and isinstance(data, dict):
            caption = data.get("caption")
        counts["pairs"] += 1
        counts["caption_characters"] += len(caption) if isinstance(caption, str) else 0
    else:
        counts["invalid_samples"] += 1


def shard_stats(
    paths: PathSpec, sim_threshold: float = 0.24, retry: RetryPolicy | None = None
) -> dict[str, Any]:
    """Counts and distributions of the shards named by ``paths`` (reads the JSON only, no image decoding).

    Returns files, documents, images, sentences, characters (of the sentences), images_per_document
    (histogram), similarity_quantiles (of each image's ``matched_sim``), similarity_above_threshold (fraction
    of images at or above ``sim_threshold``), pairs, caption_characters, and skipped (invalid samples, and
    file-level problems such as ``truncated_tar``). ``retry`` is as for :func:`validate_shards`.
    """
    counts: Counter[str] = Counter()
    histogram: Counter[int] = Counter()
    sims: list[float] = []
    files = expand_paths(paths)
    stats = ReadStats()
    for path in files:
        for _, members in iter_tar_samples(path, FileReadLog(path, stats), retry):
            _count_sample(members, counts, histogram, sims)
    above = round(sum(s >= sim_threshold for s in sims) / len(sims), 6) if sims else None
    return {
        "files": len(files),
        "documents": counts["documents"],
        "images": counts["images"],
        "sentences": counts["sentences"],
        "characters": counts["characters"],
        "images_per_document": dict(sorted(histogram.items())),
        "similarity_quantiles": _quantiles(sims),
        "similarity_above_threshold": above,
        "pairs": counts["pairs"],
        "caption_characters": counts["caption_characters"],
        "skipped": {**{k: v for k, v in counts.items() if k.startswith("invalid")}, **stats.skipped},
    }


def write_report(report: ValidationReport, path: str | os.PathLike[str]) -> None:
    """Write ``report.to_dict()`` as JSON to ``path``."""
    Path(path).write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
