"""Typed configuration of the interleaved dataset builder; defaults follow the MMC4 recipe.

Each stage reads only its own section, so a stage function can be called with e.g. a ``FetchConfig``
alone. ``BuildConfig.to_dict`` / ``from_dict`` round-trip through JSON (the engine stores it beside
the output as ``config.json``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from flamingo.configs import ConfigError, between, from_mapping

GIB = 1 << 30

# MMC4 placed images with CLIP ViT-L/14 (OpenAI weights); this is what the CLI uses unless told otherwise.
DEFAULT_CLIP = "open_clip:ViT-L-14:openai"


def _check(ok: bool, section: str, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{section}.{name} {message}")


@dataclass
class ReadConfig:
    """How pages are read and turned into sentences and image references."""

    max_html_bytes: int = field(default=5_000_000, metadata=between(1, GIB))
    """Pages larger than this (bytes) are skipped as unlikely to be articles."""
    short_block_chars: int = field(default=200, metadata=between(0, 1_000_000))
    """Blocks with fewer characters than this are dropped when link-dense (menus, tag clouds)."""
    max_link_density: float = field(default=0.5, metadata=between(0, 1, above=True))
    """Share of a short block's characters inside links above which it is boilerplate."""
    min_sentences: int = field(default=1, metadata=between(0, 1_000_000))
    """Documents with fewer sentences than this are not emitted."""
    max_images_per_document: int = field(default=100, metadata=between(0, 100_000))
    """Only the first this-many images of a page are kept (guards against image galleries)."""
    max_nesting_depth: int = field(default=10_000, metadata=between(1, 10_000_000))
    """Pages whose elements nest deeper than this are dropped (``too_deep``) before parsing: the parser's
    time grows with the square of the depth (200,000 levels take minutes)."""
    max_replacement_share: float = field(default=0.01, metadata=between(0, 1))
    """Pages whose main text is more than this share of U+FFFD replacement characters (bytes that did not
    decode in the declared or detected charset) are dropped (``undecodable_text``)."""
    code: str = "keep"
    """Code blocks (``<pre>``, multi-line ``<code>``, with their interpreter output): ``keep`` each as one text
    entry with its line breaks, or ``drop`` them."""
    splitter: str = "auto"
    """Sentence splitter: ``rules`` (fast, English rules), ``pysbd`` (pySBD in the page's language where it has
    one, else the rules), or ``auto`` (the rules for English, pySBD for the other languages it knows)."""

    def __post_init__(self) -> None:
        _check(self.code in ("keep", "drop"), "read", "code", f"is {self.code!r}; use keep or drop")
        _check(
            self.splitter in ("auto", "rules", "pysbd"),
            "read",
            "splitter",
            f"is {self.splitter!r}; use auto, rules or pysbd",
        )
        _check(self.max_html_bytes > 0, "read", "max_html_bytes", "must be positive")
        _check(0.0 < self.max_link_density <= 1.0, "read", "max_link_density", "must be in (0, 1]")
        _check(self.min_sentences >= 0, "read", "min_sentences", "must be >= 0")


@dataclass
class TextConfig:
    """Which documents' text is worth reading: language, per-site repeated lines, quality rules.

    The defaults suit an English MMC4-like corpus; ``languages: []`` keeps every language, and each quality rule
    has its own switch.
    """

    languages: list[str] = field(default_factory=lambda: ["en"])
    """ISO 639-1 codes of the languages kept (py3langid's labels); empty keeps every language."""
    min_language_score: float = field(default=0.5, metadata=between(0, 1))
    """Documents whose language probability is below this are dropped (``low_language_score``)."""
    line_dedup_min_pages: int = field(default=3, metadata=between(0, 1_000_000))
    """A text entry found on at least this many pages of one site (host name) is removed from all of them
    (menus, running titles, "Note", version banners); 0 disables."""
    quality_languages: list[str] = field(default_factory=lambda: ["en"])
    """Languages the quality rules apply to (their stop words and thresholds are English); others pass."""
    gopher_quality: bool = True
    """Apply the Gopher quality rules (word counts, word length, symbols, bullets, ellipses, stop words)."""
    gopher_min_words: int = field(default=50, metadata=between(0, 1 << 30))
    """Gopher: fewer words than this is ``gopher_short_doc``."""
    gopher_max_words: int = field(default=100_000, metadata=between(1, 1 << 30))
    """Gopher: more words than this is ``gopher_long_doc``."""
    gopher_min_avg_word_length: float = field(default=3.0, metadata=between(0, 1000))
    """Gopher: mean word length below this is ``gopher_below_avg_threshold``."""
    gopher_max_avg_word_length: float = field(default=10.0, metadata=between(0, 1000))
    """Gopher: mean word length above this is ``gopher_above_avg_threshold``."""
    gopher_max_symbol_word_ratio: float = field(default=0.1, metadata=between(0, 1000))
    """Gopher: more ``#`` or ellipses per word than this is ``gopher_too_many_hashes`` / ``_ellipsis``."""
    gopher_max_bullet_lines_ratio: float = field(default=0.9, metadata=between(0, 1))
    """Gopher: a larger share of lines starting with a bullet is ``gopher_too_many_bullets``."""
    gopher_max_ellipsis_lines_ratio: float = field(default=0.3, metadata=between(0, 1))
    """Gopher: a larger share of lines ending in an ellipsis is ``gopher_too_many_end_ellipsis``."""
    gopher_min_alpha_words_ratio: float = field(default=0.8, metadata=between(0, 1))
    """Gopher: a smaller share of words with a letter is ``gopher_below_alpha_threshold``."""
    gopher_min_stop_words: int = field(default=2, metadata=between(0, 1000))
    """Gopher: fewer distinct English stop words than this is ``gopher_enough_stop_words``."""
    gopher_repetition: bool = True
    """Apply the Gopher repetition rules (duplicate lines, top and duplicated n-grams)."""
    gopher_dup_line_frac: float = field(default=0.3, metadata=between(0, 1))
    """Gopher repetition: a larger share of duplicate lines is ``dup_line_frac``."""
    gopher_dup_line_char_frac: float = field(default=0.2, metadata=between(0, 1))
    """Gopher repetition: a larger share of characters in duplicate lines is ``dup_line_char_frac``."""
    c4: bool = True
    """Apply the C4 document rules (``lorem_ipsum``, ``curly_bracket``, ``c4_too_few_sentences``)."""
    c4_min_sentences: int = field(default=5, metadata=between(0, 1_000_000))
    """C4: fewer sentences in lines that pass C4's line rules than this is ``c4_too_few_sentences``."""

    def __post_init__(self) -> None:
        for name in ("languages", "quality_languages"):
            bad = [code for code in getattr(self, name) if not (isinstance(code, str) and code.isalpha())]
            _check(not bad, "text", name, f"has {bad!r}; use ISO 639-1 codes such as en, fr, ja")
        _check(
            self.gopher_min_avg_word_length <= self.gopher_max_avg_word_length,
            "text",
            "gopher_min_avg_word_length",
            "must be <= gopher_max_avg_word_length",
        )


@dataclass
class FetchConfig:
    """How images are downloaded or read; safe by default (public addresses only, no local files)."""

    threads: int = field(default=16, metadata=between(1, 1024))
    """Concurrent downloads per worker process."""
    timeout_s: float = field(default=10.0, metadata=between(0, 3600, above=True))
    """Socket timeout for connecting and for each read; also bounds a whole download at 3x."""
    retries: int = field(default=2, metadata=between(0, 100))
    """Extra attempts after a timeout, connection error or 5xx/429 (never after other 4xx)."""
    backoff_s: float = field(default=0.5, metadata=between(0, 3600))
    """First back-off delay; attempt k waits backoff_s * 2**k."""
    max_bytes: int = field(default=10_000_000, metadata=between(1, 4 * GIB))
    """Largest image accepted, enforced while streaming."""
    max_pixels: int = field(default=50_000_000, metadata=between(1, 1 << 32))
    """Largest width*height accepted before decoding (decompression-bomb guard)."""
    max_redirects: int = field(default=5, metadata=between(0, 20))
    """Redirect hops followed; every hop is checked like the first URL."""
    allow_loopback: bool = False
    """Allow 127.0.0.0/8 and ::1 (for tests and local mirrors)."""
    allow_private: bool = False
    """Allow private, shared and link-local ranges (10/8, 192.168/16, 169.254/16, fc00::/7, ...)."""
    local_root: str | None = None
    """Folder that local paths and file:// URLs may be read from; None refuses all local files."""
    user_agent: str = "flamingo-vlm-builder/0.1"
    """User-Agent header sent with every request."""

    def __post_init__(self) -> None:
        _check(self.threads >= 1, "fetch", "threads", "must be >= 1")
        _check(self.timeout_s > 0, "fetch", "timeout_s", "must be positive")
        _check(self.retries >= 0, "fetch", "retries", "must be >= 0")
        _check(self.max_bytes > 0, "fetch", "max_bytes", "must be positive")
        _check(self.max_pixels > 0, "fetch", "max_pixels", "must be positive")
        _check(0 <= self.max_redirects <= 20, "fetch", "max_redirects", "must be in [0, 20]")


@dataclass
class FilterConfig:
    """Which images are dropped; MMC4 drops small, ad-like, duplicated, NSFW and face images."""

    min_side: int = field(default=150, metadata=between(0, 65536))
    """Images narrower or shorter than this (pixels) are dropped (MMC4: 150)."""
    max_aspect_ratio: float = field(default=2.0, metadata=between(1, 1e6))
    """Images whose long/short side ratio exceeds this are dropped (MMC4: 2)."""
    min_bytes: int = field(default=10_000, metadata=between(0, 4 * GIB))
    """Images smaller than this on disk are dropped (OpenFlamingo: about 10 KB)."""
    drop_ads: bool = True
    """Drop tracking pixels and ad-like images (ad-server URLs, banner URLs at standard ad sizes)."""
    dedup_exact: bool = True
    """Drop later copies of byte-identical images across the whole corpus."""
    dedup_perceptual: bool = True
    """Drop later near-copies (pHash within ``phash_max_distance``) across the whole corpus."""
    phash_max_distance: int = field(default=4, metadata=between(0, 32))
    """Largest Hamming distance between 64-bit pHashes counted as the same image."""
    decontaminate_folders: list[str] = field(default_factory=list)
    """Folders of evaluation images; pHash near-copies of them are dropped."""
    decontaminate_max_distance: int = field(default=4, metadata=between(0, 32))
    """Largest pHash Hamming distance to an evaluation image counted as contamination."""
    max_faces: int = field(default=1, metadata=between(0, 1_000_000))
    """Images with at least this many detected faces are dropped (MMC4 fewer-faces: 1); 0 disables."""
    face_backend: str = "auto"
    """Face detector: opencv-haar, skimage-lbp, or auto (OpenCV's cascade when it is installed)."""
    face_cascade: str = "alt"
    """OpenCV frontal-face Haar cascade: default, alt or alt2."""
    face_min_neighbors: int = field(default=5, metadata=between(0, 1000))
    """OpenCV's minNeighbors: overlapping detections a face needs (more: fewer false faces, fewer faces)."""
    face_min_size: int = field(default=24, metadata=between(1, 512))
    """Smallest face (pixels) looked for, in the image downscaled to at most 512 px a side."""
    face_min_eyes: int = field(default=0, metadata=between(0, 2))
    """A face box counts only when OpenCV's eye cascade finds this many eyes in its upper part; 0 skips."""
    face_min_skin_share: float = field(default=0.0, metadata=between(0, 1))
    """In colour images a face box counts only when this share of its middle is skin-toned; 0 skips."""
    nsfw_threshold: float = field(default=0.5, metadata=between(0, 1))
    """Images with NSFW probability at or above this are dropped; needs a scorer or an embedder."""

    def __post_init__(self) -> None:
        _check(self.min_side >= 0, "filter", "min_side", "must be >= 0")
        _check(self.max_aspect_ratio >= 1.0, "filter", "max_aspect_ratio", "must be >= 1")
        _check(0 <= self.phash_max_distance <= 32, "filter", "phash_max_distance", "must be in [0, 32]")
        _check(
            0 <= self.decontaminate_max_distance <= 32,
            "filter",
            "decontaminate_max_distance",
            "must be in [0, 32]",
        )
        _check(self.max_faces >= 0, "filter", "max_faces", "must be >= 0 (0 disables face filtering)")
        _check(
            self.face_backend in ("auto", "opencv-haar", "skimage-lbp"),
            "filter",
            "face_backend",
            f"is {self.face_backend!r}; use auto, opencv-haar or skimage-lbp",
        )
        _check(
            self.face_cascade in ("default", "alt", "alt2"),
            "filter",
            "face_cascade",
            f"is {self.face_cascade!r}; use default, alt or alt2",
        )
        _check(0.0 <= self.nsfw_threshold <= 1.0, "filter", "nsfw_threshold", "must be in [0, 1]")


@dataclass
class InterleaveConfig:
    """How images are placed among sentences (one-to-one assignment on CLIP similarities)."""

    similarity_threshold: float = field(default=0.24, metadata=between(-1, 1))
    """Pairs with cosine similarity below this are dropped (MMC4, CLIP ViT-L/14; depends on the model)."""
    no_image_policy: str = "drop"
    """What to do with a document left without images: drop, or keep_text."""
    batch_size: int = field(default=64, metadata=between(1, 65536))
    """Images or sentences per embedding call (batched across documents)."""
    clip_actors: int = field(default=0, metadata=between(0, 4096))
    """Ray engine: CLIP actors, each loading the model once; 0 gives one per GPU, or one per worker without
    GPUs. With GPUs this caps the count (one GPU each)."""

    def __post_init__(self) -> None:
        _check(
            self.no_image_policy in ("drop", "keep_text"),
            "interleave",
            "no_image_policy",
            f"is {self.no_image_policy!r}; use drop or keep_text",
        )
        _check(self.batch_size >= 1, "interleave", "batch_size", "must be >= 1")


@dataclass
class BuildConfig:
    """The whole builder: one section per stage."""

    read: ReadConfig = field(default_factory=ReadConfig)
    """Reading pages and splitting sentences."""
    text: TextConfig = field(default_factory=TextConfig)
    """Language, repeated lines and text quality."""
    fetch: FetchConfig = field(default_factory=FetchConfig)
    """Downloading images."""
    filter: FilterConfig = field(default_factory=FilterConfig)
    """Dropping images."""
    interleave: InterleaveConfig = field(default_factory=InterleaveConfig)
    """Placing images among sentences."""
    max_documents_per_tar: int = field(default=1000, metadata=between(1, 10_000_000))
    """Documents per output tar; each input file gives its own series of tars."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        _check(self.max_documents_per_tar >= 1, "build", "max_documents_per_tar", "must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "build config") -> BuildConfig:
        """Inverse of ``to_dict``, checking every field's type and bounds; errors name ``source`` and the key."""
        return from_mapping(cls, data, source)
