"""Convert existing corpora into our shards (``flamingo data convert``).

Sources (``kind``):

* ``mmc4``: MMC4 JSONL (``.jsonl``, ``.jsonl.gz``) with a folder of images named by ``image_name``, or
  OpenFlamingo's MMC4 tar shards with the bytes in ``image_base64``. The stored matching
  (``matched_text_index``, ``matched_sim``, ``similarity_matrix``) is kept.
* ``obelics``: OBELICS parquet: aligned lists ``texts`` and ``images`` (one of the two is null at each
  node), plus ``metadata`` (JSON, per node; image nodes carry ``src``) and ``general_metadata`` (``url``).
  Images are URLs (fetched), bytes, or ``{"bytes", "path"}`` dicts (Hugging Face ``Image`` feature).
  Layout, not CLIP, places OBELICS images: each image is matched to the paragraph that follows it (one image
  per paragraph, the one right before it; images with no paragraph after them are dropped), its
  ``matched_sim`` is ``layout_similarity`` and ``similarity_matrix`` is null.
* ``pairs``: image-text pair lists (parquet or CSV, like img2dataset input) with a URL and a caption column;
  written as img2dataset-layout pair shards.

Every image goes through the builder's safe fetcher (``fetch.fetch_documents``: address checks, size caps,
format sniffing, per-shard manifests so an interrupted conversion fetches nothing twice); embedded bytes get
the same checks. Input ``i`` becomes ``shard-<i>``; ``stats.json`` and ``report.md`` say what was lost and why.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flamingo.corpus.config import FetchConfig
from flamingo.corpus.document import ImageRef, WebDocument
from flamingo.corpus.engine import BuildResult, _map, _pool
from flamingo.corpus.fetch import fetch_documents, store_image
from flamingo.corpus.imagecheck import ImageRejected, inspect_image
from flamingo.corpus.read import _open_text
from flamingo.corpus.stats import BuildStats, Laps
from flamingo.corpus.write import _shard_image, write_shard
from flamingo.errors import MissingFileError

logger = logging.getLogger(__name__)

KINDS = ("mmc4", "obelics", "pairs")


@dataclass
class ConvertConfig:
    """How a conversion runs; ``fetch`` is the builder's fetcher configuration (safe by default)."""

    fetch: FetchConfig = field(default_factory=FetchConfig)
    """Downloading (and reading local) images."""
    fetch_missing: bool = False
    """MMC4: download ``raw_url`` for images missing from the image folder or the base64 shard."""
    keep_text_only: bool = False
    """Keep interleaved documents left without any image (default: drop them, like the builder)."""
    url_column: str = "url"
    """Pairs: the column with the image URL."""
    caption_column: str = "caption"
    """Pairs: the column with the caption."""
    layout_similarity: float = 1.0
    """OBELICS: ``matched_sim`` stored for layout-placed images (no CLIP similarity exists)."""
    max_documents_per_tar: int = 1000
    """Documents (or pairs) per output tar."""
    progress: bool = True
    """Show progress bars."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        from dataclasses import asdict

        return asdict(self)


@dataclass
class ConvertTask:
    """One input file of a conversion."""

    index: int
    path: str
    kind: str
    out_dir: str
    config: ConvertConfig

    @property
    def name(self) -> str:
        """Shard name (``shard-00000``), also the name of its fetch manifest."""
        return f"shard-{self.index:05d}"


# ------------------------------------------------------------------------------------------------ MMC4


def _mmc4_image(info: Any, data: bytes | None, n_sentences: int, config: ConvertConfig) -> ImageRef:
    """One MMC4 ``image_info`` entry as an ImageRef (bytes, a URL to fetch, or dropped with a reason)."""
    if not isinstance(info, dict):
        return ImageRef(url="", failure="bad_image_info")
    raw_url = str(info.get("raw_url") or "")
    name = info.get("image_name")
    match = info.get("matched_text_index")
    meta = {"matched_text_index": match, "matched_sim": float(info.get("matched_sim") or 0.0)}
    if not isinstance(match, int) or isinstance(match, bool) or not 0 <= match < n_sentences:
        return ImageRef(url=raw_url, failure="bad_matched_text_index", metadata=meta)
    if data is not None:
        return ImageRef(url=raw_url or str(name or ""), data=data, metadata=meta)
    if isinstance(name, str) and name:
        return ImageRef(url=name, metadata={**meta, "raw_url": raw_url})
    if config.fetch_missing and raw_url:
        return ImageRef(url=raw_url, metadata=meta)
    return ImageRef(url=raw_url, failure="missing_image", metadata=meta)


def mmc4_document(
    data: dict[str, Any], doc_id: str, source: str, config: ConvertConfig, blobs: list[bytes | None]
) -> WebDocument:
    """An MMC4 document dict as a WebDocument whose images carry MMC4's matching."""
    sentences = [str(s) for s in data.get("text_list") or []]
    infos = data.get("image_info") or []
    images = [
        _mmc4_image(info, blobs[i] if i < len(blobs) else None, len(sentences), config)
        for i, info in enumerate(infos)
    ]
    matrix = data.get("similarity_matrix")
    rows_ok = isinstance(matrix, list) and len(matrix) == len(images)
    if rows_ok and all(isinstance(row, list) and len(row) == len(sentences) for row in matrix):
        images = [im.annotate(similarities=[float(v) for v in row]) for im, row in zip(images, matrix)]
    return WebDocument(
        id=doc_id, url=str(data.get("url") or ""), sentences=sentences, images=images, source=source
    )


def _missing_to_url(doc: WebDocument, config: ConvertConfig) -> WebDocument:
    """MMC4 JSONL: images whose file is not in the folder fall back to ``raw_url`` (or are dropped)."""
    images = []
    for image in doc.images:
        raw_url = image.metadata.get("raw_url")
        if image.alive and raw_url is not None and not image.url.startswith(("http:", "https:")):
            root = Path(config.fetch.local_root or ".")
            if not (root / image.url).is_file():
                ok = config.fetch_missing and bool(raw_url)
                image = replace(image, url=raw_url) if ok else image.drop("missing_image")
        images.append(image)
    return doc.with_images(images)


def read_mmc4_jsonl_docs(path: Path, config: ConvertConfig) -> list[WebDocument]:
    """Documents of an MMC4 JSONL file (images by ``image_name`` inside ``fetch.local_root``)."""
    docs = []
    stem = path.name.split(".", 1)[0]
    with _open_text(path) as handle:
        for number, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}:{number + 1}: not valid JSON ({e.msg}); expected one MMC4 document"
                ) from e
            if not isinstance(data, dict) or "text_list" not in data:
                raise ValueError(
                    f"{path}:{number + 1}: not an MMC4 document (needs text_list and image_info)"
                )
            doc = mmc4_document(data, f"{stem}-{number:07d}", path.name, config, [])
            docs.append(_missing_to_url(doc, config))
    return docs


def read_mmc4_tar_docs(path: Path, config: ConvertConfig) -> list[WebDocument]:
    """Documents of an OpenFlamingo MMC4 tar shard (images base64-encoded in the JSON)."""
    from flamingo.data.mmc4 import decode_base64_images
    from flamingo.data.shards import FileReadLog, ReadStats, iter_tar_samples

    docs = []
    log = FileReadLog(path, ReadStats())
    for key, members in iter_tar_samples(path, log):
        try:
            data = json.loads(members.get("json", b""))
        except (UnicodeDecodeError, json.JSONDecodeError):
            log.skip("bad_json", f"[{key}]")
            continue
        if not isinstance(data, dict) or "text_list" not in data:
            log.skip("not_mmc4", f"[{key}]")
            continue
        images, bad = decode_base64_images(data)
        blobs = [None if i in bad else im.data for i, im in enumerate(images)]
        docs.append(mmc4_document(data, key.rsplit("/", 1)[-1], path.name, config, blobs))
    log.finish()
    return docs


# --------------------------------------------------------------------------------------------- OBELICS


def _json_value(value: Any) -> Any:
    if isinstance(value, str | bytes):
        try:
            return json.loads(value)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
    return value


def _obelics_image(image: Any, node_meta: Any) -> ImageRef | None:
    """An OBELICS image node: bytes, a ``{"bytes", "path"}`` dict, a URL, or the ``src`` in its metadata."""
    src = node_meta.get("src") if isinstance(node_meta, dict) else None
    if isinstance(image, dict):
        if image.get("bytes"):
            return ImageRef(url=str(src or image.get("path") or ""), data=bytes(image["bytes"]))
        image = image.get("path") or image.get("url")
    if isinstance(image, bytes | bytearray) and image:
        return ImageRef(url=str(src or ""), data=bytes(image))
    if isinstance(image, str) and image:
        return ImageRef(url=image)
    return ImageRef(url=str(src)) if src else None


def obelics_document(row: dict[str, Any], doc_id: str, source: str, similarity: float) -> WebDocument:
    """One OBELICS row: paragraphs as sentences, each image matched to the paragraph that follows it."""
    texts, images = list(row.get("texts") or []), list(row.get("images") or [])
    if len(texts) != len(images):
        raise ValueError(
            f"{source} [{doc_id}]: texts ({len(texts)}) and images ({len(images)}) are not aligned"
        )
    node_meta = _json_value(row.get("metadata"))
    node_meta = (
        node_meta if isinstance(node_meta, list) and len(node_meta) == len(texts) else [None] * len(texts)
    )
    sentences: list[str] = []
    refs: list[ImageRef] = []
    waiting: list[ImageRef] = []
    for text, image, meta in zip(texts, images, node_meta):
        if isinstance(text, str) and text.strip():
            if waiting:  # one image per paragraph: the one right before it
                refs += [im.drop("no_free_paragraph") for im in waiting[:-1]]
                refs.append(waiting[-1].annotate(matched_text_index=len(sentences), matched_sim=similarity))
                waiting = []
            sentences.append(" ".join(text.split()))
        elif text is None:
            ref = _obelics_image(image, meta)
            waiting += [ref] if ref is not None else []
    refs += [im.drop("no_following_paragraph") for im in waiting]
    general = _json_value(row.get("general_metadata"))
    url = str(general.get("url") or "") if isinstance(general, dict) else str(row.get("url") or "")
    return WebDocument(id=doc_id, url=url, sentences=sentences, images=refs, source=source)


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
        yield from batch.to_pylist()


def read_obelics_docs(path: Path, config: ConvertConfig) -> list[WebDocument]:
    """Documents of an OBELICS parquet file (ids from an ``id`` column, else ``<stem>-<row>``)."""
    import pyarrow.parquet as pq

    columns = set(pq.ParquetFile(path).schema_arrow.names)
    if not {"texts", "images"} <= columns:
        raise ValueError(
            f"{path}: OBELICS parquet needs columns 'texts' and 'images'; found {sorted(columns)}"
        )
    stem = path.name.split(".", 1)[0]
    return [
        obelics_document(row, str(row.get("id") or f"{stem}-{n:07d}"), path.name, config.layout_similarity)
        for n, row in enumerate(_parquet_rows(path))
    ]


# ----------------------------------------------------------------------------------------------- pairs


def _table_rows(path: Path) -> tuple[list[str], Iterator[dict[str, Any]]]:
    """Column names and rows of a parquet or CSV (optionally .gz) file."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names), _parquet_rows(path)
    if name.endswith((".csv", ".csv.gz", ".tsv")):
        import pyarrow.csv as pcsv

        parse = pcsv.ParseOptions(delimiter="\t" if name.endswith(".tsv") else ",")
        table = pcsv.read_csv(path, parse_options=parse)
        return list(table.column_names), iter(table.to_pylist())
    raise ValueError(f"{path}: pair lists must be .parquet, .csv(.gz) or .tsv")


def read_pair_docs(path: Path, config: ConvertConfig, shard: str) -> list[WebDocument]:
    """Rows of a pair list as one-image documents keyed ``<shard>_<row>`` (rows without a caption dropped)."""
    columns, rows = _table_rows(path)
    for flag, column in (("--url-col", config.url_column), ("--caption-col", config.caption_column)):
        if column not in columns:
            raise ValueError(f"{path}: no column {column!r} (columns: {columns}); name it with {flag}")
    docs = []
    for n, row in enumerate(rows):
        url, caption = row.get(config.url_column), row.get(config.caption_column)
        extra = {k: v for k, v in row.items() if k not in (config.url_column, config.caption_column)}
        has_caption = isinstance(caption, str) and bool(caption.strip())
        failure = None if url and has_caption else ("missing_url" if not url else "missing_caption")
        image = ImageRef(url=str(url or ""), failure=failure)
        docs.append(
            WebDocument(
                id=f"{shard}_{n:07d}",
                url=str(url or ""),
                sentences=[caption] if has_caption else [],
                images=[image],
                source=path.name,
                metadata=_json_safe(extra),
            )
        )
    return docs


def _json_safe(values: dict[str, Any]) -> dict[str, Any]:
    """The values that survive ``json.dumps`` unchanged (others are stringified)."""
    out = {}
    for key, value in values.items():
        try:
            json.dumps(value)
            out[str(key)] = value
        except (TypeError, ValueError):
            out[str(key)] = str(value)
    return out


# ------------------------------------------------------------------------------------ images and writing


def _store_embedded(image: ImageRef, config: FetchConfig, images_dir: Path) -> ImageRef:
    """Check embedded bytes like fetched ones and store them by content hash (bytes released)."""
    assert image.data is not None
    try:
        fmt, width, height = inspect_image(image.data, config.max_pixels)
    except ImageRejected as e:
        return image.drop(e.reason)
    if len(image.data) > config.max_bytes:
        return image.drop("too_large")
    sha, path = store_image(image.data, fmt, images_dir)
    meta = {**image.metadata, "bytes": len(image.data)}
    return replace(
        image, data=None, path=str(path), sha256=sha, format=fmt, width=width, height=height, metadata=meta
    )


def resolve_images(docs: list[WebDocument], task: ConvertTask) -> list[WebDocument]:
    """Every kept image checked and stored: embedded bytes directly, everything else via the fetcher."""
    cfg = task.config.fetch
    images_dir = Path(task.out_dir) / "images"
    stored = [
        doc.with_images(
            [_store_embedded(im, cfg, images_dir) if im.alive and im.data else im for im in doc.images]
        )
        for doc in docs
    ]
    pending = [doc.with_images([im for im in doc.images if im.alive and im.path is None]) for doc in stored]
    fetched = iter(
        im
        for doc in fetch_documents(pending, cfg, task.out_dir, task.name, task.config.progress)
        for im in doc.images
    )
    return [
        doc.with_images([next(fetched) if im.alive and im.path is None else im for im in doc.images])
        for doc in stored
    ]


def write_pairs(docs: list[WebDocument], task: ConvertTask) -> list[Path]:
    """Kept pairs as img2dataset-layout shards ``<out>/shards/<shard>-NNNNNN.tar``."""
    from flamingo.data.schema import EncodedImage, ImageTextPair
    from flamingo.data.shards import PairShardWriter

    folder = Path(task.out_dir) / "shards"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{task.name}-*.tar"):
        old.unlink()
    with PairShardWriter(
        folder, prefix=task.name, max_samples_per_shard=task.config.max_documents_per_tar
    ) as w:
        for doc in docs:
            image = doc.alive_images[0]
            data, ext = _shard_image(image)
            meta = {**doc.metadata, "key": doc.id, "status": "success", "sha256": image.sha256}
            pair = ImageTextPair(
                doc.id,
                doc.sentences[0],
                EncodedImage(data, ext),
                image.url,
                image.width or 0,
                image.height or 0,
                meta,
            )
            w.write(pair)
    return w.shard_paths


def _restore_raw_url(doc: WebDocument) -> WebDocument:
    """MMC4 folder images were read by file name; the shards record where they came from on the web."""
    images = [
        replace(im, url=im.metadata["raw_url"]) if im.metadata.get("raw_url") else im for im in doc.images
    ]
    return doc.with_images(images)


def _read_task(task: ConvertTask) -> list[WebDocument]:
    path = Path(task.path)
    if task.kind == "pairs":
        return read_pair_docs(path, task.config, task.name)
    if task.kind == "obelics":
        return read_obelics_docs(path, task.config)
    if path.name.lower().endswith((".tar", ".tar.gz", ".tgz")):
        return read_mmc4_tar_docs(path, task.config)
    return read_mmc4_jsonl_docs(path, task.config)


def convert_shard(task: ConvertTask) -> tuple[BuildStats, list[Path]]:
    """Read, fetch and write one input file; stats in the builder's format (stages read, fetch, write)."""
    stats = BuildStats(shards=1)
    lap = Laps()
    docs = _read_task(task)
    stats.record("read", [], docs, seconds=lap())
    fetched = [_restore_raw_url(doc) for doc in resolve_images(docs, task)]
    keep_text = task.config.keep_text_only and task.kind != "pairs"
    kept = [d for d in fetched if d.sentences and (d.alive_images or keep_text)]
    stats.record("fetch", docs, fetched, seconds=lap())
    if task.kind == "pairs":
        paths = write_pairs(kept, task)
    else:
        paths = write_shard(kept, Path(task.out_dir) / "shards", task.name, task.config.max_documents_per_tar)
    stats.record("write", fetched, kept, doc_reason="no_image_left", seconds=lap())
    stats.record_output(kept)
    return stats, paths


def _check_convert_inputs(inputs: Sequence[str | os.PathLike[str]], kind: str, image_dir: Any) -> list[str]:
    if kind not in KINDS:
        raise ValueError(f"convert: kind {kind!r}; use one of {', '.join(KINDS)}")
    paths = [str(p) for p in inputs]
    if not paths:
        raise ValueError("convert: no input files")
    for p in paths:
        if not Path(p).is_file():
            raise MissingFileError(f"convert: input {p} does not exist or is not a file")
    jsonl = [p for p in paths if p.lower().endswith((".jsonl", ".jsonl.gz"))]
    if kind == "mmc4" and jsonl and image_dir is None:
        raise ValueError(
            f"convert: MMC4 JSONL ({jsonl[0]}) needs --images DIR, the folder of its image files"
        )
    if image_dir is not None and not Path(image_dir).is_dir():
        raise MissingFileError(f"convert: image folder {image_dir} does not exist")
    return paths


def convert(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    kind: str,
    config: ConvertConfig | None = None,
    image_dir: str | os.PathLike[str] | None = None,
    workers: int = 1,
) -> BuildResult:
    """Convert MMC4 / OBELICS / pair-list files into shards under ``out_dir/shards`` (+ stats.json, report.md).

    ``image_dir`` is MMC4 JSONL's image folder (the only folder local images are read from).
    """
    config = config or ConvertConfig()
    paths = _check_convert_inputs(inputs, kind, image_dir)
    if image_dir is not None:
        config = replace(config, fetch=replace(config.fetch, local_root=str(Path(image_dir).resolve())))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "convert.json").write_text(
        json.dumps({"kind": kind, **config.to_dict()}, indent=2) + "\n", encoding="utf-8"
    )
    tasks = [ConvertTask(i, p, kind, str(out), config) for i, p in enumerate(paths)]
    pool = _pool(max(1, workers), len(tasks))
    try:
        results = _map(convert_shard, pool, config.progress, f"convert {kind}", tasks)
    finally:
        if pool is not None:
            pool.shutdown()
    stats, shard_paths = BuildStats(), []
    for shard_stats, paths_ in results:
        stats.merge(shard_stats)
        shard_paths += paths_
    stats.save(out)
    return BuildResult(stats, shard_paths)
