"""Accounting of a build: what went in and out of every stage, and why things were dropped.

``BuildStats.record(stage, before, after)`` compares the documents before and after a stage: images
that were kept before and carry a ``failure`` after are counted by reason; documents missing after are
counted under the stage's document-drop reason. Per-shard stats merge by addition, so the totals in
``stats.json`` do not depend on how the work was split, apart from each stage's ``seconds``: wall time summed
over shards (worker-seconds), which says where a build spends its time.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flamingo.configs import between, from_mapping
from flamingo.corpus.document import WebDocument, count

if TYPE_CHECKING:
    from flamingo.corpus.read import ReadCounts

_COUNT = between(0, 1 << 62)

STAGES = (
    "read",
    "language",
    "lines",
    "quality",
    "fetch",
    "filter",
    "decontaminate",
    "dedup",
    "faces",
    "nsfw",
    "interleave",
    "write",
)


def _failures(docs: list[WebDocument]) -> Counter[str]:
    return Counter(im.failure for doc in docs for im in doc.images if im.failure is not None)


@dataclass
class StageStats:
    """Counts for one stage."""

    documents_in: int = field(default=0, metadata=_COUNT)
    documents_out: int = field(default=0, metadata=_COUNT)
    images_in: int = field(default=0, metadata=_COUNT)
    images_out: int = field(default=0, metadata=_COUNT)
    sentences_in: int = field(default=0, metadata=_COUNT)
    sentences_out: int = field(default=0, metadata=_COUNT)
    images_dropped: Counter[str] = field(default_factory=Counter, metadata=_COUNT)
    documents_dropped: Counter[str] = field(default_factory=Counter, metadata=_COUNT)
    seconds: float = field(default=0.0, metadata=between(0, 1e12))
    """Wall time of the stage, summed over shards."""

    def add(self, other: StageStats) -> None:
        """Add ``other``'s counts to these."""
        for name in (
            "documents_in",
            "documents_out",
            "images_in",
            "images_out",
            "sentences_in",
            "sentences_out",
            "seconds",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.images_dropped.update(other.images_dropped)
        self.documents_dropped.update(other.documents_dropped)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counts (drop reasons sorted)."""
        out: dict[str, Any] = {
            k: getattr(self, k) for k in ("documents_in", "documents_out", "images_in", "images_out")
        }
        out.update(sentences_in=self.sentences_in, sentences_out=self.sentences_out)
        out["images_dropped"] = dict(sorted(self.images_dropped.items()))
        out["documents_dropped"] = dict(sorted(self.documents_dropped.items()))
        out["seconds"] = round(self.seconds, 3)
        return out


@dataclass
class BuildStats:
    """All stages' counts plus the images-per-document histogram of the output."""

    stages: dict[str, StageStats] = field(default_factory=dict)
    images_per_document: Counter[int] = field(default_factory=Counter, metadata=_COUNT)
    shards: int = field(default=0, metadata=_COUNT)

    def _flow(
        self, stage: str, before: list[WebDocument], after: list[WebDocument], seconds: float
    ) -> tuple[StageStats, dict[str, int], dict[str, int]]:
        """Add a stage's time and its documents, images and sentences in and out; the stage's stats and the
        counts before and after."""
        s = self.stages.setdefault(stage, StageStats())
        s.seconds += seconds
        n_before, n_after = count(before), count(after)
        s.documents_in += n_before["documents"]
        s.documents_out += n_after["documents"]
        s.images_in += n_before["images"]
        s.images_out += n_after["images"]
        s.sentences_in += n_before["sentences"]
        s.sentences_out += n_after["sentences"]
        return s, n_before, n_after

    def record(
        self,
        stage: str,
        before: list[WebDocument],
        after: list[WebDocument],
        doc_reason: str = "",
        seconds: float = 0.0,
    ) -> None:
        """Count what ``stage`` did, going from ``before`` to ``after`` in ``seconds``."""
        s, n_before, n_after = self._flow(stage, before, after, seconds)
        kept = {doc.id for doc in after}
        newly = _failures(after) - _failures([doc for doc in before if doc.id in kept])
        s.images_dropped.update(newly)
        # Kept images of dropped documents are lost with them; count them so image totals add up.
        lost = sum(len(doc.alive_images) for doc in before if doc.id not in kept)
        if lost:
            s.images_dropped[f"document_{doc_reason or 'dropped'}"] += lost
        if n_before["documents"] > n_after["documents"]:
            s.documents_dropped[doc_reason or "dropped"] += n_before["documents"] - n_after["documents"]

    def record_drops(
        self,
        stage: str,
        before: list[WebDocument],
        after: list[WebDocument],
        dropped: list[tuple[WebDocument, str]],
        seconds: float = 0.0,
    ) -> None:
        """Count a stage that drops documents for several reasons: ``dropped`` pairs each one with its reason."""
        s, _, _ = self._flow(stage, before, after, seconds)
        for doc, reason in dropped:
            s.documents_dropped[reason] += 1
            if doc.alive_images:
                s.images_dropped[f"document_{reason}"] += len(doc.alive_images)

    def record_read(self, docs: list[WebDocument], counts: ReadCounts, seconds: float = 0.0) -> None:
        """Count the read stage: ``counts.pages`` pages in, ``docs`` out, the rest dropped by reason."""
        s = self.stages.setdefault("read", StageStats())
        s.seconds += seconds
        out = count(docs)
        s.documents_in += counts.pages
        s.documents_out += out["documents"]
        s.images_in += out["images"] + sum(counts.images_dropped.values())
        s.images_out += out["images"]
        s.sentences_out += out["sentences"]
        s.images_dropped.update(counts.images_dropped)
        s.documents_dropped.update(counts.documents_dropped)

    def record_output(self, docs: list[WebDocument]) -> None:
        """Add the written documents to the images-per-document histogram."""
        self.images_per_document.update(len(doc.alive_images) for doc in docs)

    def merge(self, other: BuildStats) -> None:
        """Add ``other`` (e.g. another shard's stats) to this one."""
        for name, stage in other.stages.items():
            self.stages.setdefault(name, StageStats()).add(stage)
        self.images_per_document.update(other.images_per_document)
        self.shards += other.shards

    def to_dict(self) -> dict[str, Any]:
        """The ``stats.json`` content, stages in pipeline order."""
        order = [s for s in STAGES if s in self.stages] + sorted(set(self.stages) - set(STAGES))
        return {
            "shards": self.shards,
            "stages": {name: self.stages[name].to_dict() for name in order},
            "images_per_document": {str(k): v for k, v in sorted(self.images_per_document.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "stats.json") -> BuildStats:
        """Inverse of ``to_dict``, checking every count; errors name ``source`` and the field."""
        return from_mapping(cls, data, source)

    def report_markdown(self) -> str:
        """A human-readable summary (``report.md``)."""
        lines = ["# Interleaved dataset build report", "", f"Input shards: {self.shards}", ""]
        lines += [
            "| stage | docs in | docs out | images in | images out | sentences out | seconds (all workers) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, s in self.to_dict()["stages"].items():
            row = (s["documents_in"], s["documents_out"], s["images_in"], s["images_out"], s["sentences_out"])
            row += (f"{s['seconds']:.1f}",)
            lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
        lines += ["", "## Drops by reason", "", "| stage | what | reason | count |", "|---|---|---|---|"]
        for name, stage in self.stages.items():
            for what, counter in (("images", stage.images_dropped), ("documents", stage.documents_dropped)):
                for reason, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
                    lines.append(f"| {name} | {what} | {reason} | {n} |")
        lines += ["", "## Images per output document", "", "| images | documents |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(self.images_per_document.items())]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | Path) -> None:
        """Write ``stats.json`` and ``report.md`` into ``out_dir``."""
        out = Path(out_dir)
        (out / "stats.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        (out / "report.md").write_text(self.report_markdown(), encoding="utf-8")


class Laps:
    """``lap()`` returns the seconds since the previous lap (or since creation)."""

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def __call__(self) -> float:
        now = time.perf_counter()
        spent, self._last = now - self._last, now
        return spent
