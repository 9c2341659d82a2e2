"""Validation reports and statistics of shards (library side of ``flamingo data validate`` / ``stats``).

Both walk the tar members directly, so that a report can name every problem of every sample instead of
skipping them the way the readers do. A sample is an interleaved document when its JSON has ``text_list``
(ours or OpenFlamingo's MMC4 shards), else an image-text pair when it has an image member.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from flamingo.data.mmc4 import check_mmc4_dict, decode_base64_images, is_mmc4_dict
from flamingo.data.paths import PathSpec, expand_paths
from flamingo.data.schema import (
    IMAGE_EXTENSIONS,
    EncodedImage,
    SchemaIssue,
    check_document_dict,
    check_pair_dict,
)
from flamingo.data.shards import FileReadLog, ReadStats, iter_tar_samples

_FILE_FIXES = {
    "missing_file": "check the path, glob or brace pattern",
    "unreadable_file": "the file is not a (gzipped) tar; rewrite it with InterleavedShardWriter",
    "truncated_tar": "the tar ends early (interrupted copy or write); copy or rebuild the shard",
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

    def describe(self) -> str:
        return f"{self.file} [{self.key}] field '{self.field}': {self.message}. Fix: {self.fix}"


@dataclass
class ValidationReport:
    """Everything :func:`validate_shards` found; ``ok`` is True when nothing is wrong."""

    files: list[str] = field(default_factory=list)
    documents: int = 0
    images: int = 0
    sentences: int = 0
    pairs: int = 0
    undecodable_images: int = 0
    images_per_document: Counter[int] = field(default_factory=Counter)
    issues: list[ValidationIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "files": self.files,
            "documents": self.documents,
            "images": self.images,
            "sentences": self.sentences,
            "pairs": self.pairs,
            "undecodable_images": self.undecodable_images,
            "images_per_document": {str(k): v for k, v in sorted(self.images_per_document.items())},
            "issues": [issue.__dict__ for issue in self.issues],
        }

    def to_text(self, max_issues: int = 50) -> str:
        """A human-readable report: counts, the images-per-document histogram, then the issues."""
        lines = [
            f"{'OK' if self.ok else 'PROBLEMS FOUND'}: {len(self.files)} file(s)",
            f"  documents {self.documents}, images {self.images}, sentences {self.sentences}, pairs {self.pairs}",
            f"  undecodable images {self.undecodable_images}, issues {len(self.issues)}",
        ]
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
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return None, str(error)


def _decodes(image: EncodedImage) -> str | None:
    """None when ``image`` decodes, else the error."""
    try:
        image.decode()
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        return str(error) or type(error).__name__
    return None


class _Validator:
    def __init__(self, check_images: bool):
        self.report = ValidationReport()
        self.check_images = check_images

    def issue(self, file: str, key: str, problem: SchemaIssue) -> None:
        self.report.issues.append(ValidationIssue(file, key, problem.field, problem.message, problem.fix))

    def file(self, path: Path) -> None:
        self.report.files.append(str(path))
        stats = ReadStats()
        for key, members in iter_tar_samples(path, FileReadLog(path, stats)):
            self.sample(str(path), key, members)
        for reason, detail in stats.skipped.items():
            message = f"{reason} ({detail} time(s))"
            self.issue(
                str(path), "<file>", SchemaIssue("<file>", message, _FILE_FIXES.get(reason, "rebuild it"))
            )

    def sample(self, file: str, key: str, members: dict[str, bytes]) -> None:
        data, error = _load_json(members.get("json"))
        image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in members), None)
        if error is not None:
            self.issue(file, key, SchemaIssue("<json>", f"not valid JSON: {error}", "write valid UTF-8 JSON"))
        elif isinstance(data, dict) and "text_list" in data:
            self.document(file, key, data, members)
        elif image_ext is not None:
            self.pair(file, key, data if isinstance(data, dict) else {}, members, image_ext)
        else:
            fix = "write <key>.json (document) or <key>.jpg + <key>.txt (pair)"
            self.issue(
                file, key, SchemaIssue("<sample>", f"neither a document nor a pair: {sorted(members)}", fix)
            )

    def document(self, file: str, key: str, data: dict[str, Any], members: dict[str, bytes]) -> None:
        mmc4 = is_mmc4_dict(data)
        problems = check_mmc4_dict(data) if mmc4 else check_document_dict(data)
        for problem in problems:
            self.issue(file, key, problem)
        if problems:
            return
        self.report.documents += 1
        self.report.sentences += len(data["text_list"])
        self.report.images += len(data["image_info"])
        self.report.images_per_document[len(data["image_info"])] += 1
        for index, image in self._document_images(file, key, data, members, mmc4):
            problem = _decodes(image) if self.check_images and image is not None else None
            if problem is not None:
                self.report.undecodable_images += 1
                fix = "re-download or re-encode the image, or remove its image_info entry"
                self.issue(
                    file, key, SchemaIssue(f"image_info[{index}]", f"undecodable image: {problem}", fix)
                )

    def _document_images(
        self, file: str, key: str, data: dict[str, Any], members: dict[str, bytes], mmc4: bool
    ) -> list[tuple[int, EncodedImage | None]]:
        if mmc4:
            images, bad = decode_base64_images(data)
            for index in bad:
                fix = "store the image bytes base64-encoded, or remove the entry"
                self.issue(
                    file, key, SchemaIssue(f"image_info[{index}].image_base64", "missing or invalid", fix)
                )
            return [(i, image) for i, image in enumerate(images) if i not in bad]
        found = []
        for index, info in enumerate(data["image_info"]):
            member = info["member"]
            if member not in members:
                message = f"member {key}.{member} is not in the tar"
                fix = "add the image member next to the JSON or remove its image_info entry"
                self.issue(file, key, SchemaIssue(f"image_info[{index}].member", message, fix))
                continue
            image = EncodedImage(members[member], member.rsplit(".", 1)[1])
            if info.get("sha256") and image.sha256() != info["sha256"]:
                fix = "recompute sha256 from the member's bytes"
                self.issue(
                    file, key, SchemaIssue(f"image_info[{index}].sha256", "does not match the bytes", fix)
                )
            found.append((index, image))
        return found

    def pair(self, file: str, key: str, meta: dict[str, Any], members: dict[str, bytes], ext: str) -> None:
        caption = (
            members["txt"].decode("utf-8", errors="replace") if "txt" in members else meta.get("caption")
        )
        problems = check_pair_dict({**meta, "caption": caption})
        for problem in problems:
            self.issue(file, key, problem)
        problem = _decodes(EncodedImage(members[ext], ext)) if self.check_images else None
        if problem is not None:
            self.report.undecodable_images += 1
            self.issue(
                file, key, SchemaIssue(ext, f"undecodable image: {problem}", "re-download or re-encode it")
            )
        if not problems and problem is None:
            self.report.pairs += 1


def validate_shards(paths: PathSpec, check_images: bool = True) -> ValidationReport:
    """Check every sample of the shards named by ``paths`` (files, globs, brace patterns, folders).

    Interleaved documents (ours and OpenFlamingo's MMC4 shards) and img2dataset pairs are recognised per
    sample. With ``check_images`` every image is decoded. Counts include only valid samples.
    """
    validator = _Validator(check_images)
    for path in expand_paths(paths):
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


def shard_stats(paths: PathSpec, sim_threshold: float = 0.24) -> dict[str, Any]:
    """Counts and distributions of the shards named by ``paths`` (reads the JSON only, no image decoding).

    Returns files, documents, images, sentences, characters (of the sentences), images_per_document
    (histogram), similarity_quantiles (of each image's ``matched_sim``), similarity_above_threshold (fraction
    of images at or above ``sim_threshold``), pairs, caption_characters, and skipped (invalid samples, and
    file-level problems such as ``truncated_tar``).
    """
    counts: Counter[str] = Counter()
    histogram: Counter[int] = Counter()
    sims: list[float] = []
    files = expand_paths(paths)
    stats = ReadStats()
    for path in files:
        for _, members in iter_tar_samples(path, FileReadLog(path, stats)):
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
