"""Per-site line deduplication: text entries repeated on many pages of one site are boilerplate.

A running title, a version banner ("Docs for 0.19.3 All versions"), an admonition label ("Note") or a
download link repeats on every page of a site, yet reads as a sentence. Like C4's and OBELICS' paragraph
deduplication, this is a corpus-wide pass per site (host name):

1. each worker reports, per document, its site and the hashes of its distinct text entries (``line_records``);
2. the driver counts on how many pages of a site each hash occurs and names those found on at least
   ``text.line_dedup_min_pages`` pages (``plan_line_dedup``); counts do not depend on the order of the
   records, so any engine and any number of workers remove the same lines;
3. each worker removes those entries from its documents (``apply_line_dedup``), moving image positions with
   them; a document left without text is dropped (``all_lines_repeated``).

Entries are compared case-folded with whitespace collapsed. Code entries take part: a copyright header
repeated in every example is boilerplate too.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Iterable
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from flamingo.corpus.document import WebDocument

LineRecord = tuple[str, tuple[int, ...]]  # (site, distinct entry hashes of one document)
RepeatedLines = dict[str, frozenset[int]]  # site -> hashes of the entries to remove from its pages


def site_of(doc: WebDocument) -> str:
    """The site a document belongs to: the URL's host name; for a local file, its folder; "" when unknown
    (no URL, as in most JSONL corpora: such documents are not compared with each other)."""
    parts = urlsplit(doc.url)
    if parts.hostname:
        return parts.hostname.lower()
    if parts.scheme == "file" and parts.path:
        return "file:" + str(PurePosixPath(parts.path).parent)
    return ""


def line_hash(text: str) -> int:
    """A 64-bit hash of an entry, case-folded with whitespace collapsed (stable across processes)."""
    normal = " ".join(text.casefold().split())
    return int.from_bytes(hashlib.blake2b(normal.encode("utf-8"), digest_size=8).digest(), "big")


def line_records(docs: Iterable[WebDocument]) -> list[LineRecord]:
    """The slim records the planner needs: per document, its site and its distinct entry hashes."""
    records = [(site_of(doc), doc) for doc in docs]
    return [(site, tuple(sorted({line_hash(s) for s in doc.sentences}))) for site, doc in records if site]


def plan_line_dedup(records: Iterable[LineRecord], min_pages: int) -> RepeatedLines:
    """Per site, the hashes of the entries found on at least ``min_pages`` of its pages (none when 0)."""
    if min_pages <= 0:
        return {}
    pages: dict[str, Counter[int]] = {}
    for site, hashes in records:
        pages.setdefault(site, Counter()).update(hashes)
    repeated = {
        site: frozenset(h for h, n in counts.items() if n >= min_pages) for site, counts in pages.items()
    }
    return {site: hashes for site, hashes in repeated.items() if hashes}


def for_documents(repeated: RepeatedLines, docs: Iterable[WebDocument]) -> RepeatedLines:
    """The part of ``repeated`` about the sites of ``docs`` (what one shard's worker needs)."""
    sites = {site_of(doc) for doc in docs}
    return {site: hashes for site, hashes in repeated.items() if site in sites}


def _without_repeated(doc: WebDocument, repeated: RepeatedLines) -> WebDocument:
    hashes = repeated.get(site_of(doc), frozenset())
    keep = [line_hash(s) not in hashes for s in doc.sentences]
    if all(keep):
        return doc
    # new index of every old position 0..len: an image before a removed entry moves to the next kept one
    new_index = [0] * (len(keep) + 1)
    for i, kept in enumerate(keep):
        new_index[i + 1] = new_index[i] + kept
    images = [
        im if im.position is None else dataclasses.replace(im, position=new_index[im.position])
        for im in doc.images
    ]
    metadata = dict(doc.metadata)
    if "code_entries" in metadata:
        metadata["code_entries"] = [new_index[i] for i in metadata["code_entries"] if keep[i]]
    sentences = [s for s, kept in zip(doc.sentences, keep) if kept]
    return dataclasses.replace(doc, sentences=sentences, images=images, metadata=metadata)


def apply_line_dedup(
    docs: list[WebDocument], repeated: RepeatedLines
) -> tuple[list[WebDocument], list[tuple[WebDocument, str]]]:
    """Documents without the repeated entries, and those left empty (``all_lines_repeated``)."""
    if not repeated:
        return docs, []
    kept: list[WebDocument] = []
    dropped: list[tuple[WebDocument, str]] = []
    for doc in docs:
        cleaned = _without_repeated(doc, repeated)
        if cleaned.sentences:
            kept.append(cleaned)
        else:
            dropped.append((doc, "all_lines_repeated"))
    return kept, dropped
