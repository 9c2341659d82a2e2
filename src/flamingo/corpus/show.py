"""Render one interleaved document as a self-contained HTML page (``flamingo data show``).

Images are embedded as base64 data URIs and placed before the sentence they are matched to (the MMC4
convention: ``<image>{sentence}``), each with its similarity. Every piece of document text (sentences,
URL, id, image URLs) is HTML-escaped, and a Content-Security-Policy forbids scripts and remote loads, so
a hostile page in the corpus cannot inject markup into the viewer.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from flamingo.data.remote import is_url, url_exists
from flamingo.data.schema import InterleavedDocument
from flamingo.data.shards import ReadStats, read_interleaved
from flamingo.errors import MissingFileError

_MIME = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_STYLE = (
    "body{font-family:sans-serif;max-width:52rem;margin:2rem auto;line-height:1.5;color:#222}"
    "figure{margin:1rem 0;padding:.5rem;border:1px solid #ddd;display:inline-block}"
    "figure img{max-width:100%;max-height:24rem;display:block}"
    "figcaption{font-size:.85rem;color:#555}.meta{font-size:.85rem;color:#666;word-break:break-all}"
    "p.s{margin:.25rem 0}.n{color:#999;font-size:.75rem;margin-right:.4rem}"
)


def load_document(shard: str | os.PathLike[str], index: int) -> InterleavedDocument:
    """The ``index``-th (0-based) document of an interleaved shard (ours or an MMC4 base64 shard), a local file or
    a URL (``s3://``, ``gs://``, ``https://``, ``pipe:``; read only up to that document)."""
    if index < 0:
        raise ValueError(f"--doc {index}: use a 0-based document index")
    exists = url_exists(shard) if is_url(shard) else Path(shard).is_file()
    if not exists:
        raise MissingFileError(f"shard {shard} does not exist")
    seen = 0
    for document in read_interleaved(shard, stats=ReadStats(), drop_bad_images=True):
        if seen == index:
            return document
        seen += 1
    raise ValueError(f"shard {shard} has {seen} readable document(s); --doc {index} is out of range")


def _figure(document: InterleavedDocument, i: int) -> str:
    info, image = document.image_info[i], document.images[i]
    ext = info.member.rsplit(".", 1)[-1].lower()
    mime = _MIME.get(ext, "application/octet-stream")
    src = f"data:{mime};base64,{base64.b64encode(image.data).decode('ascii')}"
    caption = f"image {i} &middot; similarity {info.matched_sim:.3f}"
    if info.raw_url:
        caption += f" &middot; <span class=meta>{html.escape(info.raw_url)}</span>"
    alt = html.escape(f"image {i} of document {document.id}")
    return f'<figure><img src="{src}" alt="{alt}"><figcaption>{caption}</figcaption></figure>'


def render_document_html(document: InterleavedDocument) -> str:
    """A complete HTML page: header (id, URL, counts), then sentences with their images in place."""
    by_sentence: dict[int, list[int]] = {}
    for i, info in enumerate(document.image_info):
        by_sentence.setdefault(info.matched_text_index, []).append(i)
    body = []
    for s, sentence in enumerate(document.text_list):
        body += [_figure(document, i) for i in by_sentence.get(s, []) if i < len(document.images)]
        body.append(f"<p class=s><span class=n>{s}</span>{html.escape(sentence)}</p>")
    title = html.escape(f"document {document.id}")
    meta = [f"id: {html.escape(document.id)}"]
    if document.url:
        meta.append(f"url: {html.escape(document.url)}")
    if document.source:
        meta.append(f"source: {html.escape(document.source)}")
    meta.append(f"{len(document.text_list)} sentences, {len(document.image_info)} images")
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f"<title>{title}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{title}</h1><div class=meta>{'<br>'.join(meta)}</div><hr>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def show_document(
    shard: str | os.PathLike[str], index: int, out: str | os.PathLike[str]
) -> tuple[Path, InterleavedDocument]:
    """Write the ``index``-th document of ``shard`` as a self-contained HTML page to ``out``."""
    document = load_document(shard, index)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_document_html(document), encoding="utf-8")
    return path, document
