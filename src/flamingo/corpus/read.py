"""Read stage: WARC files, HTML files and JSONL documents -> ``WebDocument``s.

HTML extraction (selectolax/lexbor) keeps the main text and the images in page order:

1. boilerplate elements are removed (nav, header, footer, aside, script, style, forms, ...);
2. the remaining text is grouped into blocks by its nearest block-level ancestor (p, div, li, h1, ...);
3. short blocks whose characters are mostly inside links (menus, tag clouds) are dropped, with their images;
4. the page's language is identified from its prose (``language.identify_language``);
5. each prose block is split into sentences in that language, a heading is one entry, a code block
   (``<pre>``, a multi-line ``<code>``) is one entry with its line breaks (or dropped: ``read.code``), and
   each image is placed before the entry that follows it.

Permalink marks of headings (Sphinx's "¶", "#" anchors) and line numbers of code listings are removed first.
A short label just before a code block ("Out:", "In [3]:") goes into the code entry: it is the interpreter's.

Image URLs are resolved against ``<base href>`` or the page URL; ``data:`` and other schemes are skipped.
Lazy-loaded images resolve to their real address (``data-src``, ``srcset``, a ``<noscript>`` fallback), and a
block of link-wrapped images alone is kept only beside prose.

Each page becomes a document or is dropped under a reason counted in ``ReadCounts`` (``page_too_large``,
``too_deep``, ``undecodable_text``, ``too_few_sentences``); the engine puts the counts into ``stats.json``.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

from selectolax.lexbor import LexborHTMLParser, LexborNode

from flamingo.corpus.config import ReadConfig
from flamingo.corpus.document import ImageRef, WebDocument
from flamingo.corpus.language import identify_language
from flamingo.corpus.sentences import split_sentences

logger = logging.getLogger(__name__)

_BOILERPLATE = (
    "script, style, noscript, template, svg, canvas, iframe, nav, header, footer, aside, form, button, "
    "select, textarea, input, menu, dialog, [role=navigation], [role=banner], [role=contentinfo], "
    "[role=complementary], [role=search], [aria-hidden=true], [hidden], "
    # permalink marks of headings and line numbers of code listings (Sphinx, Pygments, GitHub-style anchors)
    "a.headerlink, a.anchor, a.anchorjs-link, a.heading-anchor, a[title^=Permalink], a[aria-label^=Permalink], "
    ".linenos, .lineno, .linenodiv"
)
# Text of a link that only marks a heading's permalink.
_PERMALINK_MARKS = frozenset({"¶", "#", "§", "🔗", "⚓"})
# A label printed before a code block's output or input: "Out:", "Output:", "In [3]:", "[3]:", ">>>".
_CODE_LABEL = re.compile(r"(?:(?:out|output|in|result|results)\s*)?(?:\[\s*\d*\s*\])?\s*:", re.IGNORECASE)
_CODE = "code"
_BLOCK_TAGS = frozenset(
    {
        "p", "div", "li", "ul", "ol", "dl", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6", "table", "tr",
        "td", "th", "tbody", "thead", "blockquote", "pre", "article", "section", "main", "figure",
        "figcaption", "body", "address", "center", "details", "summary",
    }
)  # fmt: skip
_MAX_ANCESTOR_WALK = 64  # bounds the work per node on pathologically deep pages
_IMAGE_SCHEMES = ("http", "https", "file")
# Elements that never hold children (void) or whose end tag the parser supplies when a sibling opens
# (``<p>``, ``<li>``, ...): the nesting scan skips them so unclosed ones do not count as depth.
_FLAT_TAGS = frozenset(
    {
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr",
        "param", "keygen", "html", "head", "body", "p", "li", "dt", "dd", "option", "optgroup", "tr", "td",
        "th", "tbody", "thead", "tfoot", "colgroup", "caption", "rb", "rt", "rp", "rtc",
    }
)  # fmt: skip
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)")


class PageDropped(ValueError):
    """A page the reader refuses as a whole; ``reason`` is the name it is counted under."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class ReadCounts:
    """What the read stage saw: pages read, and why pages (documents) or images were left out."""

    pages: int = 0
    documents_dropped: Counter[str] = field(default_factory=Counter)
    images_dropped: Counter[str] = field(default_factory=Counter)

    def drop_page(self, reason: str, images: int = 0) -> None:
        """Count one page dropped for ``reason``, with the ``images`` it held."""
        self.documents_dropped[reason] += 1
        if images:
            self.images_dropped[f"document_{reason}"] += images


def nesting_depth(html: str, limit: int) -> int:
    """The deepest element nesting of ``html`` from a linear scan of its tags, stopping once past ``limit``.

    It is an estimate that errs high (misnested or unclosed tags count as open; tags inside comments and
    scripts count too); it costs one regular-expression pass, while the HTML parser's time grows with the
    square of the depth.
    """
    depth = deepest = 0
    for match in _TAG.finditer(html):
        if match.group(2).lower() in _FLAT_TAGS:
            continue
        if match.group(1):
            depth = max(depth - 1, 0)
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                break
    return deepest


@dataclass
class _Block:
    text: list[str] = field(default_factory=list)
    link_chars: int = 0
    images: list[tuple[int, ImageRef]] = field(default_factory=list)  # (chars of text before it, image)
    linked_images: int = 0  # how many of ``images`` sit inside a link
    tag: str = ""  # the block element's tag ("" for text outside any block element; "code" for code)

    def joined(self) -> str:
        if self.tag == _CODE:
            return _code_text("".join(self.text))
        return " ".join("".join(self.text).split())


def _code_text(raw: str) -> str:
    """A code block's text: its line breaks and indentation kept, trailing spaces and blank edges removed."""
    lines = [line.rstrip() for line in raw.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def _block_and_link(node: LexborNode, code_ids: set[int]) -> tuple[int, str, bool]:
    """The mem_id and tag of the nearest block-level ancestor, and whether ``node`` sits inside a link.

    The outermost code element (``code_ids``) above ``node`` wins over any block inside it: the tag is then
    ``code``.
    """
    in_link = False
    found: tuple[int, str] | None = None
    parent = node.parent
    for _ in range(_MAX_ANCESTOR_WALK):
        if parent is None:
            break
        if parent.tag == "a":
            in_link = True
        if parent.mem_id in code_ids:
            found = (parent.mem_id, _CODE)
        elif found is None and parent.tag in _BLOCK_TAGS:
            found = (parent.mem_id, parent.tag or "")
            if not code_ids:
                break
        parent = parent.parent
    if found is None:
        return 0, "", in_link
    return found[0], found[1], in_link


def _code_ids(root: LexborNode) -> set[int]:
    """The mem_ids of the code elements: ``<pre>``, and ``<code>`` blocks (with a line break) outside one."""
    ids = {node.mem_id for node in root.css("pre")}
    for node in root.css("code"):
        if "\n" in (node.text(deep=True) or "").strip() and not _inside(node, "pre", root):
            ids.add(node.mem_id)
    return ids


def _remove_permalinks(root: LexborNode) -> None:
    """Remove links whose whole text is a permalink mark ("¶", "#"), wherever the page put them."""
    for link in root.css("a"):
        if (link.text(deep=True) or "").strip() in _PERMALINK_MARKS:
            link.decompose()


# Where lazy-loading scripts keep the real address while ``src`` holds a placeholder.
_LAZY_SRC_ATTRS = ("data-src", "data-original", "data-lazy-src")
_LAZY_SRCSET_ATTRS = ("data-srcset", "srcset")
# File names of the blank or spinner images that lazy loaders put in ``src`` (``blank.gif``, ``lazy-load.png``).
_PLACEHOLDER_NAMES = frozenset(
    {"blank", "spacer", "placeholder", "pixel", "transparent", "lazy", "loading", "loader", "empty", "1x1"}
)


def _is_placeholder(src: str) -> bool:
    if src.lower().startswith("data:"):
        return True
    name = urlsplit(src).path.rsplit("/", 1)[-1].lower()
    return re.split(r"[-_.]", name, maxsplit=1)[0] in _PLACEHOLDER_NAMES


def _srcset_candidates(srcset: str) -> Iterator[tuple[str, str]]:
    """``(url, descriptor)`` pairs of a ``srcset``: a URL runs to whitespace (it may hold commas, as
    ``data:`` URLs do) and a comma ending it ends the candidate; otherwise the descriptor runs to a comma."""
    pos, end = 0, len(srcset)
    while pos < end:
        while pos < end and (srcset[pos].isspace() or srcset[pos] == ","):
            pos += 1
        start = pos
        while pos < end and not srcset[pos].isspace():
            pos += 1
        url = srcset[start:pos]
        if not url:
            break
        if url.endswith(","):
            yield url.rstrip(","), ""
            continue
        comma = srcset.find(",", pos)
        comma = end if comma < 0 else comma
        yield url, srcset[pos:comma].strip().lower()
        pos = comma + 1


def _largest_candidate(srcset: str) -> str:
    """The URL of the widest (``800w``) or densest (``2x``) candidate of a ``srcset``; "" when none."""
    best, best_key = "", (-1, -1.0)
    for url, descriptor in _srcset_candidates(srcset):
        if _is_placeholder(url):
            continue
        number = re.fullmatch(r"(\d+(?:\.\d+)?)([wx])", descriptor)
        # widths outrank densities: a srcset should not mix them, and a width says more
        key = (1 if number.group(2) == "w" else 0, float(number.group(1))) if number else (0, 1.0)
        if key > best_key:
            best, best_key = url, key
    return best


def _image_src(attrs: dict[str, str | None]) -> str:
    """The real address of an ``<img>``: ``src`` unless it is missing or a placeholder, else a lazy-loading
    attribute, else the largest ``srcset`` candidate."""
    src = (attrs.get("src") or "").strip()
    if src and not _is_placeholder(src):
        return src
    for name in _LAZY_SRC_ATTRS:
        value = (attrs.get(name) or "").strip()
        if value and not _is_placeholder(value):
            return value
    for name in _LAZY_SRCSET_ATTRS:
        value = _largest_candidate(attrs.get(name) or "")
        if value:
            return value
    return ""


def _image_from_node(node: LexborNode, base_url: str) -> ImageRef | None:
    attrs = node.attributes
    src = _image_src(attrs)
    if not src:
        return None
    url = urljoin(base_url, src) if base_url else src
    if urlsplit(url).scheme not in _IMAGE_SCHEMES:
        return None
    return ImageRef(url=url, alt=" ".join((attrs.get("alt") or "").split()))


def _inside(node: LexborNode, tag: str, stop: LexborNode) -> bool:
    parent = node.parent
    for _ in range(_MAX_ANCESTOR_WALK):
        if parent is None or parent.mem_id == stop.mem_id:
            return False
        if parent.tag == tag:
            return True
        parent = parent.parent
    return False


def _promote_noscript_images(root: LexborNode, base_url: str) -> None:
    """Move the ``<img>`` of a ``<noscript>`` fallback out of it (before boilerplate removal drops it) when
    its parent shows no real image of its own, only a lazy-loading placeholder or nothing."""
    for noscript in root.css("noscript"):
        fallbacks = noscript.css("img")
        parent = noscript.parent
        if not fallbacks or parent is None:
            continue
        shown = [
            img
            for img in parent.css("img")
            if not _inside(img, "noscript", parent) and _image_from_node(img, base_url) is not None
        ]
        if shown:
            continue  # the page already shows the image (e.g. from data-src): do not add it twice
        for img in fallbacks:
            noscript.insert_before(img)


def _collect_blocks(root: LexborNode, base_url: str) -> list[_Block]:
    """Text and images grouped into blocks, in document order."""
    blocks: list[_Block] = []
    current_id: int | None = None
    code_ids = _code_ids(root)
    for node in root.traverse(include_text=True):
        if node.tag not in ("-text", "img", "br"):
            continue
        block_id, block_tag, in_link = _block_and_link(node, code_ids)
        if block_id != current_id:
            blocks.append(_Block(tag=block_tag))
            current_id = block_id
        block = blocks[-1]
        if node.tag == "-text":
            text = node.text_content or ""
            block.text.append(text)
            if in_link:
                block.link_chars += len(text.strip())
        elif node.tag == "br":
            block.text.append("\n" if block.tag == _CODE else " ")
        else:
            image = _image_from_node(node, base_url)
            if image is not None:
                block.images.append((len(block.joined()), image))
                block.linked_images += in_link
    return blocks


def _is_boilerplate(block: _Block, text: str, config: ReadConfig) -> bool:
    if block.tag == _CODE:
        return config.code == "drop"  # identifiers linked to API pages are code, not menus
    if not text or len(text) >= config.short_block_chars:
        return False
    return block.link_chars / len(text) > config.max_link_density


_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})


def _kept_blocks(blocks: list[_Block], texts: list[str], config: ReadConfig) -> list[bool]:
    """Which blocks are main content.

    A short block mostly inside links is boilerplate. A block of images alone, every one inside a link
    (thumbnails, logos, banners) or followed by a caption that is dropped as links (gallery tiles), is all
    link too: it is kept only beside prose, i.e. when the nearest
    text block before or after it is kept and is not a heading (a paragraph, a caption), so a linked figure
    in an article stays while a gallery index of headings and linked thumbnails loses its images.
    """
    keep = [not _is_boilerplate(block, text, config) for block, text in zip(blocks, texts)]
    for i, block in enumerate(blocks):
        if texts[i] or not block.images:
            continue
        # a picture captioned by a link alone (a gallery tile: Sphinx-Gallery links the caption, not the
        # image) is a link as much as a linked picture
        caption = _next_text(texts, i, 1)
        all_linked = block.linked_images == len(block.images)
        linked_caption = (
            not all_linked and caption >= 0 and not keep[caption] and blocks[caption].link_chars > 0
        )
        if not (all_linked or linked_caption):
            continue
        # a tile's neighbour is what follows its caption: the paragraph before a gallery is not its text
        neighbours = (
            (_next_text(texts, caption, 1),)
            if linked_caption
            else (_next_text(texts, i, -1), _next_text(texts, i, 1))
        )
        keep[i] = any(_prose_at(blocks, texts, keep, j) for j in neighbours)
    return keep


def _next_text(texts: list[str], i: int, step: int) -> int:
    """The index of the nearest block with text from ``i`` in direction ``step``; -1 when none."""
    j = i + step
    while 0 <= j < len(texts) and not texts[j]:
        j += step
    return j if 0 <= j < len(texts) else -1


def _prose_at(blocks: list[_Block], texts: list[str], keep: list[bool], j: int) -> bool:
    return j >= 0 and keep[j] and blocks[j].tag not in _HEADINGS


@dataclass
class _Page:
    """What ``_extract`` reads from a page: text entries, images, which entries are code, the language."""

    sentences: list[str] = field(default_factory=list)
    images: list[ImageRef] = field(default_factory=list)
    code_entries: list[int] = field(default_factory=list)
    language: str = ""
    language_score: float = 0.0

    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"language": self.language, "language_score": round(self.language_score, 4)}
        if self.code_entries:
            out["code_entries"] = list(self.code_entries)
        return out


def extract_html(html: str, page_url: str, config: ReadConfig) -> tuple[list[str], list[ImageRef]]:
    """Main-text entries (sentences; a heading or a code block whole) and images (with ``position`` and
    ``alt``) of one HTML page.

    Raises ``PageDropped`` (reason ``too_deep``) for a page nested deeper than ``config.max_nesting_depth``.
    """
    page = _extract(html, page_url, config)
    return page.sentences, page.images[: config.max_images_per_document]


def _attach_code_labels(blocks: list[_Block], texts: list[str], keep: list[bool]) -> None:
    """Move a kept label such as "Out:" into the code block right after it (same list positions)."""
    for i, block in enumerate(blocks):
        if not keep[i] or block.tag == _CODE or not _CODE_LABEL.fullmatch(texts[i]):
            continue
        j = _next_text(texts, i, 1)
        if j >= 0 and blocks[j].tag == _CODE:  # a dropped code block takes its label with it
            texts[j] = f"{texts[i]}\n{texts[j]}"
            shift = len(texts[i]) + 1
            blocks[j].images = [(offset + shift, image) for offset, image in blocks[j].images]
            blocks[j].images[:0] = [(0, image) for _, image in block.images]
            block.images = []
            texts[i] = ""


def _entries(block: _Block, text: str, split: Any) -> list[str]:
    """A block's text entries: a code block or a heading is one entry; prose is split into sentences."""
    if not text:
        return []
    if block.tag == _CODE or block.tag in _HEADINGS:
        return [text]
    return split(text)


def _extract(html: str, page_url: str, config: ReadConfig) -> _Page:
    """``extract_html`` without the cap on images per page, with the language and the code entries."""
    depth = nesting_depth(html, config.max_nesting_depth)
    if depth > config.max_nesting_depth:
        raise PageDropped(
            "too_deep", f"elements nested more than read.max_nesting_depth={config.max_nesting_depth} deep"
        )
    tree = LexborHTMLParser(html)
    base = tree.css_first("base[href]")
    base_url = urljoin(page_url, base.attributes.get("href") or "") if base is not None else page_url
    root = tree.body
    if root is None:
        return _Page()
    _promote_noscript_images(root, base_url)
    for node in root.css(_BOILERPLATE):
        node.decompose()
    _remove_permalinks(root)
    page = _Page()
    blocks = _collect_blocks(root, base_url)
    texts = [block.joined() for block in blocks]
    keep = _kept_blocks(blocks, texts, config)
    _attach_code_labels(blocks, texts, keep)
    prose = " ".join(t for b, t, k in zip(blocks, texts, keep) if k and t and b.tag != _CODE)
    page.language, page.language_score = identify_language(prose)

    def split(text: str) -> list[str]:
        return split_sentences(text, page.language, config.splitter)

    for block, text, kept in zip(blocks, texts, keep):
        if not kept:
            continue
        for offset, image in block.images:
            before = len(_entries(block, text[:offset], split)) if offset else 0
            image.position = len(page.sentences) + before
            page.images.append(image)
        entries = _entries(block, text, split)
        if block.tag == _CODE and entries:
            page.code_entries.append(len(page.sentences))
        page.sentences.extend(entries)
    return page


def _document_id(source: str, key: str) -> str:
    return hashlib.sha1(f"{source}\0{key}".encode()).hexdigest()[:20]


def _charset(content_type: str | None) -> str | None:
    match = re.search(r"charset=[\"']?([\w.:-]+)", content_type or "", re.IGNORECASE)
    return match.group(1) if match else None


_HEAD_SCAN_BYTES = 65_536
_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([\w.:-]+)", re.IGNORECASE)
# Markup, scripts and styles are ASCII in every encoding the detector weighs; left in, they swamp the few
# bytes that tell the encodings apart. ``[^<>]`` keeps a stray ``<`` from scanning to the end of the page.
_NOT_TEXT = re.compile(rb"<(script|style)\b.*?</\1\s*>|<!--.*?-->|<[^<>]*>", re.IGNORECASE | re.DOTALL)
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _meta_charset(raw: bytes) -> str | None:
    """The ``<meta charset>`` or ``http-equiv`` charset of the page's head (at most its first 64 KB)."""
    head = raw[:_HEAD_SCAN_BYTES]
    end = head.lower().find(b"</head")
    match = _META_CHARSET.search(head if end < 0 else head[:end])
    return match.group(1).decode("ascii") if match else None


def _codec(name: str | None) -> str | None:
    """Python's name for a declared charset, or None when Python does not know it."""
    if not name:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def _decode_html(raw: bytes, content_type: str | None) -> str:
    """The page's text, decoded by its byte-order mark, its declared charset (HTTP header, then a
    ``<meta>`` in the head) or, when it declares none, as UTF-8 if that is clean, else by the charset
    ``charset_normalizer`` detects in its text. Undecodable bytes become U+FFFD (counted by the caller).
    """
    for bom, codec in _BOMS:
        if raw.startswith(bom):
            return raw.decode(codec, errors="replace")
    codec = _codec(_charset(content_type)) or _codec(_meta_charset(raw))
    if codec is not None:
        return raw.decode(codec, errors="replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = from_bytes(_NOT_TEXT.sub(b" ", raw))
    best = matches.best()
    if best is None:
        return raw.decode("utf-8", errors="replace")
    # On a short text several single-byte charsets fit equally well; windows-1252, the most common
    # undeclared legacy charset of the web (the WHATWG default for unlabelled pages), breaks such ties.
    tied = {m.encoding for m in matches if m.chaos <= best.chaos and m.coherence >= best.coherence}
    return raw.decode("cp1252" if "cp1252" in tied else best.encoding, errors="replace")


def _replacement_share(sentences: list[str]) -> float:
    chars = sum(len(s) for s in sentences)
    return sum(s.count("\ufffd") for s in sentences) / chars if chars else 0.0


def _make_document(
    doc_id: str,
    url: str,
    html: str,
    source: str,
    config: ReadConfig,
    metadata: dict[str, Any],
    counts: ReadCounts,
) -> WebDocument | None:
    """The document of one page, or None with the reason counted in ``counts``."""
    try:
        page = _extract(html, url, config)
    except PageDropped as dropped:
        logger.info("skipping %s in %s: %s", url, source, dropped)
        counts.drop_page(dropped.reason)
        return None
    sentences, images = page.sentences, page.images
    if len(sentences) < config.min_sentences:
        counts.drop_page("too_few_sentences", len(images))
        return None
    if _replacement_share(sentences) > config.max_replacement_share:
        counts.drop_page("undecodable_text", len(images))
        return None
    over = len(images) - config.max_images_per_document
    if over > 0:
        counts.images_dropped["images_over_page_cap"] += over
        images = images[: config.max_images_per_document]
    return WebDocument(
        id=doc_id,
        url=url,
        sentences=sentences,
        images=images,
        source=source,
        metadata={**metadata, **page.metadata()},
    )


def read_warc(
    path: str | os.PathLike[str], config: ReadConfig, counts: ReadCounts | None = None
) -> Iterator[WebDocument]:
    """Documents from the HTML ``response`` records of a (gzipped) WARC file, in file order.

    Every 2xx HTML response is a page; ``counts`` (when given) receives the pages and why any were dropped.
    """
    from warcio.archiveiterator import ArchiveIterator

    counts = counts if counts is not None else ReadCounts()
    source = Path(path).name
    with open(path, "rb") as stream:
        for record in ArchiveIterator(stream):
            if record.rec_type != "response" or record.http_headers is None:
                continue
            content_type = record.http_headers.get_header("Content-Type") or ""
            if "html" not in content_type.lower():
                continue
            if not (record.http_headers.get_statuscode() or "").startswith("2"):
                continue
            counts.pages += 1
            raw = record.content_stream().read(config.max_html_bytes + 1)
            url = record.rec_headers.get_header("WARC-Target-URI") or ""
            if len(raw) > config.max_html_bytes:
                logger.info("skipping %s in %s: page larger than read.max_html_bytes", url, source)
                counts.drop_page("page_too_large")
                continue
            record_id = record.rec_headers.get_header("WARC-Record-ID") or url
            doc = _make_document(
                _document_id(source, record_id),
                url,
                _decode_html(raw, content_type),
                source,
                config,
                {"warc_record_id": record_id, "warc_date": record.rec_headers.get_header("WARC-Date")},
                counts,
            )
            if doc is not None:
                yield doc


def read_html_file(
    path: str | os.PathLike[str], config: ReadConfig, url: str | None = None, counts: ReadCounts | None = None
) -> list[WebDocument]:
    """One document from an HTML file; relative image URLs resolve against ``url`` or the file itself."""
    counts = counts if counts is not None else ReadCounts()
    file_path = Path(path).resolve()
    page_url = url or file_path.as_uri()
    counts.pages += 1
    with open(file_path, "rb") as f:
        raw = f.read(config.max_html_bytes + 1)
    if len(raw) > config.max_html_bytes:
        logger.info("skipping %s: page larger than read.max_html_bytes", file_path)
        counts.drop_page("page_too_large")
        return []
    doc = _make_document(
        _document_id(file_path.name, page_url),
        page_url,
        _decode_html(raw, None),
        file_path.name,
        config,
        {},
        counts,
    )
    return [doc] if doc is not None else []


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _jsonl_images(value: Any, where: str) -> list[ImageRef]:
    if not isinstance(value, list):
        raise ValueError(f"{where}: field 'images' must be a list of URLs, paths or {{'url', 'alt'}} objects")
    images = []
    for item in value:
        if isinstance(item, str):
            images.append(ImageRef(url=item))
        elif isinstance(item, dict) and isinstance(item.get("url") or item.get("path"), str):
            images.append(ImageRef(url=item.get("url") or item["path"], alt=str(item.get("alt", ""))))
        else:
            raise ValueError(f"{where}: each entry of 'images' must be a string or an object with 'url'")
    return images


def read_jsonl(
    path: str | os.PathLike[str], config: ReadConfig, counts: ReadCounts | None = None
) -> Iterator[WebDocument]:
    """Documents from JSONL lines ``{"text" or "text_list", "images": [...], "id"?, "url"?}``.

    Image positions are unknown (None): JSONL has no page layout. Relative image paths are resolved by
    the fetch stage against ``fetch.local_root``.
    """
    counts = counts if counts is not None else ReadCounts()
    file_path = Path(path)
    with _open_text(file_path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{file_path}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{where}: not valid JSON ({e.msg}); each line must be one document object"
                ) from e
            if "text_list" in record:
                sentences = [" ".join(str(s).split()) for s in record["text_list"]]
                language, score = identify_language(" ".join(sentences))
            elif isinstance(record.get("text"), str):
                language, score = identify_language(record["text"])
                sentences = split_sentences(record["text"], language, config.splitter)
            else:
                raise ValueError(f"{where}: needs a string field 'text' (or a list 'text_list')")
            counts.pages += 1
            images = _jsonl_images(record.get("images", []), where)
            if len(sentences) < config.min_sentences:
                counts.drop_page("too_few_sentences", len(images))
                continue
            over = len(images) - config.max_images_per_document
            if over > 0:
                counts.images_dropped["images_over_page_cap"] += over
            yield WebDocument(
                id=str(record.get("id") or _document_id(file_path.name, str(line_no))),
                url=str(record.get("url", "")),
                sentences=[s for s in sentences if s],
                images=images[: config.max_images_per_document],
                source=file_path.name,
                metadata={
                    **{
                        k: v
                        for k, v in record.items()
                        if k not in ("text", "text_list", "images", "id", "url")
                    },
                    "language": language,
                    "language_score": round(score, 4),
                },
            )


def input_kind(path: str | os.PathLike[str]) -> str:
    """``warc``, ``html`` or ``jsonl``, from the file name; an error names the supported suffixes."""
    name = Path(path).name.lower()
    if name.endswith((".warc", ".warc.gz", ".arc.gz")):
        return "warc"
    if name.endswith((".html", ".htm")):
        return "html"
    if name.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
        return "jsonl"
    raise ValueError(f"input {path}: unknown kind; use .warc(.gz), .html/.htm or .jsonl(.gz)")


def read_input(
    path: str | os.PathLike[str], config: ReadConfig, counts: ReadCounts | None = None
) -> list[WebDocument]:
    """All documents of one input file, in file order; ``counts`` receives the pages read and the drops."""
    kind = input_kind(path)
    if kind == "warc":
        docs = list(read_warc(path, config, counts))
    elif kind == "html":
        docs = read_html_file(path, config, counts=counts)
    else:
        docs = list(read_jsonl(path, config, counts))
    return _unique_ids(docs)


def _unique_ids(docs: list[WebDocument]) -> list[WebDocument]:
    """Suffix repeated ids (``x``, ``x~1``, ...): later stages and the accounting key documents by id."""
    seen: dict[str, int] = {}
    for doc in docs:
        n = seen.get(doc.id, 0)
        seen[doc.id] = n + 1
        if n:
            doc.id = f"{doc.id}~{n}"
    return docs
