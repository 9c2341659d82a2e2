"""The shard schemas: interleaved documents and image-text pairs, as typed dataclasses.

An interleaved shard is a WebDataset tar. Members are grouped by key (the member path up to the first dot of
its basename); one document per key: ``<key>.json`` plus one member per image, ``<key>.<i>.<ext>``::

    doc000042.json     {"format": "flamingo-interleaved/1", "id": ..., "text_list": [...], "image_info": [...]}
    doc000042.0.jpg
    doc000042.1.png

The JSON uses MMC4's field names (``text_list``, ``image_info``, ``matched_text_index``, ``matched_sim``,
``similarity_matrix``) so that MMC4 code paths share it. ``image_info[i]["member"]`` is the member suffix after
the key (``"0.jpg"``). Pair shards follow img2dataset: ``<key>.jpg``, ``<key>.txt``, ``<key>.json``.

Validation collects :class:`SchemaIssue` objects (field, message, fix) so that a validator can report every
problem of a file; :meth:`InterleavedDocument.from_dict` raises :class:`SchemaError` on the first one.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from flamingo.errors import FlamingoError

FORMAT = "flamingo-interleaved/1"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")
_MEMBER_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+\.(jpg|jpeg|png|webp)$")


@dataclass(frozen=True)
class SchemaIssue:
    """One problem in a JSON document: which field, what is wrong, how to fix it."""

    field: str
    message: str
    fix: str

    def describe(self, source: str = "<dict>", key: str | None = None) -> str:
        where = f"{source}" + (f" [{key}]" if key else "")
        return f"{where}: field '{self.field}': {self.message}. Fix: {self.fix}"


class SchemaError(FlamingoError, ValueError):
    """A document that does not follow the schema; the message names the file, key, field and fix."""

    def __init__(self, issue: SchemaIssue, source: str = "<dict>", key: str | None = None):
        super().__init__(issue.describe(source, key))
        self.issue = issue
        self.source = source
        self.key = key


def is_valid_key(key: str) -> bool:
    """Whether ``key`` can name a WebDataset sample (no dots, no slashes, not empty)."""
    return bool(_KEY_PATTERN.match(key))


@dataclass
class EncodedImage:
    """Encoded image bytes with lazy, cached decoding.

    ``ext`` is the file extension without a dot (``jpg``, ``png``, ...). :meth:`decode` raises an ``OSError``
    (PIL's ``UnidentifiedImageError`` is one) on corrupt bytes.
    """

    data: bytes
    ext: str
    _decoded: Image.Image | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_decoded(cls, image: Image.Image) -> EncodedImage:
        """An image known only decoded: its encoded size is unknown (``data`` is empty), so it cannot be
        written to a shard, and size filters leave it alone."""
        return cls(b"", "png", image)

    @property
    def num_bytes(self) -> int:
        """Encoded size in bytes; 0 when the image is known only decoded."""
        return len(self.data)

    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def decode(self) -> Image.Image:
        """The decoded PIL image (fully loaded, original mode); decoded once and cached."""
        if self._decoded is None:
            image = Image.open(io.BytesIO(self.data))
            image.load()
            self._decoded = image
        return self._decoded


@dataclass
class ImageInfo:
    """One image of an interleaved document (an entry of ``image_info``)."""

    member: str
    """Member suffix after the key, ``"<i>.<ext>"``."""
    matched_text_index: int
    """Index in ``text_list`` of the sentence this image belongs to."""
    matched_sim: float = 0.0
    """Similarity of the image with its matched sentence (CLIP cosine in MMC4)."""
    raw_url: str | None = None
    width: int = 0
    height: int = 0
    sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "member": self.member,
            "raw_url": self.raw_url,
            "matched_text_index": self.matched_text_index,
            "matched_sim": self.matched_sim,
            "width": self.width,
            "height": self.height,
            "sha256": self.sha256,
        }


@dataclass
class InterleavedDocument:
    """A web document: sentences and images, with the image-sentence matching.

    ``images`` (not serialised to JSON) holds the encoded images in ``image_info`` order when the document
    was read from a shard or built in memory; it is empty for a JSON-only document.
    """

    id: str
    text_list: list[str]
    image_info: list[ImageInfo]
    similarity_matrix: list[list[float]] | None = None
    """(images x sentences) similarities, or None when unknown."""
    url: str | None = None
    source: str | None = None
    images: list[EncodedImage] = field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "id": self.id,
            "url": self.url,
            "text_list": list(self.text_list),
            "image_info": [info.to_dict() for info in self.image_info],
            "similarity_matrix": self.similarity_matrix,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>", key: str | None = None) -> InterleavedDocument:
        """Parse and validate a JSON dict; raises :class:`SchemaError` naming the first bad field."""
        issues = check_document_dict(data)
        if issues:
            raise SchemaError(issues[0], source, key)
        return cls(
            id=data["id"],
            text_list=list(data["text_list"]),
            image_info=[_image_info_from_dict(info) for info in data["image_info"]],
            similarity_matrix=data.get("similarity_matrix"),
            url=data.get("url"),
            source=data.get("source"),
        )

    def without_images(self, drop: set[int]) -> InterleavedDocument:
        """A copy without the images whose indices are in ``drop`` (rows of the similarity matrix too)."""
        keep = [i for i in range(len(self.image_info)) if i not in drop]
        matrix = self.similarity_matrix
        return InterleavedDocument(
            id=self.id,
            text_list=list(self.text_list),
            image_info=[self.image_info[i] for i in keep],
            similarity_matrix=None if matrix is None else [matrix[i] for i in keep],
            url=self.url,
            source=self.source,
            images=[self.images[i] for i in keep] if self.images else [],
        )


@dataclass
class ImageTextPair:
    """An image with its caption (img2dataset layout)."""

    key: str
    caption: str
    image: EncodedImage
    url: str | None = None
    width: int = 0
    height: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    """Any other fields of the sample's JSON, kept as they are."""

    def to_json_dict(self) -> dict[str, Any]:
        out = dict(self.metadata)
        out.update({"caption": self.caption, "url": self.url, "width": self.width, "height": self.height})
        return out


def _image_info_from_dict(data: dict[str, Any]) -> ImageInfo:
    return ImageInfo(
        member=data["member"],
        matched_text_index=int(data["matched_text_index"]),
        matched_sim=float(data.get("matched_sim", 0.0)),
        raw_url=data.get("raw_url"),
        width=int(data.get("width", 0)),
        height=int(data.get("height", 0)),
        sha256=data.get("sha256", ""),
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_document_dict(data: Any) -> list[SchemaIssue]:
    """Every schema problem of one interleaved-document JSON dict (an empty list when it is valid)."""
    if not isinstance(data, dict):
        return [
            SchemaIssue("<root>", f"expected a JSON object, got {type(data).__name__}", "write one object")
        ]
    issues: list[SchemaIssue] = []
    if data.get("format") != FORMAT:
        issues.append(
            SchemaIssue(
                "format", f"expected {FORMAT!r}, got {data.get('format')!r}", f'set "format": "{FORMAT}"'
            )
        )
    if not isinstance(data.get("id"), str) or not data.get("id"):
        issues.append(
            SchemaIssue("id", "missing or not a non-empty string", "give each document a string id")
        )
    for name in ("url", "source"):
        if data.get(name) is not None and not isinstance(data[name], str):
            issues.append(SchemaIssue(name, "must be a string or null", f"store {name} as a string or null"))
    text_list = data.get("text_list")
    if not isinstance(text_list, list) or not all(isinstance(s, str) for s in text_list):
        issues.append(SchemaIssue("text_list", "must be a list of strings", "store the sentences as strings"))
        text_list = None
    image_info = data.get("image_info")
    if not isinstance(image_info, list):
        issues.append(
            SchemaIssue("image_info", "must be a list", "store one object per image (may be empty)")
        )
        return issues
    num_sentences = len(text_list) if text_list is not None else None
    for index, info in enumerate(image_info):
        issues.extend(_check_image_info(info, index, num_sentences))
    members = [info.get("member") for info in image_info if isinstance(info, dict)]
    if len(set(members)) != len(members):
        issues.append(
            SchemaIssue("image_info[].member", "duplicate member names", "number images 0.jpg, 1.jpg...")
        )
    issues.extend(_check_similarity_matrix(data.get("similarity_matrix"), len(image_info), num_sentences))
    return issues


def _check_image_info(info: Any, index: int, num_sentences: int | None) -> list[SchemaIssue]:
    where = f"image_info[{index}]"
    if not isinstance(info, dict):
        return [SchemaIssue(where, "must be an object", "store one object per image")]
    issues = []
    member = info.get("member")
    if not isinstance(member, str) or not _MEMBER_PATTERN.match(member):
        issues.append(
            SchemaIssue(
                f"{where}.member",
                f"got {member!r}; expected '<i>.<ext>' with ext in {IMAGE_EXTENSIONS}",
                f'name the image member "{index}.jpg" (the tar member is "<key>.{index}.jpg")',
            )
        )
    match = info.get("matched_text_index")
    if not isinstance(match, int) or isinstance(match, bool):
        issues.append(SchemaIssue(f"{where}.matched_text_index", f"got {match!r}", "store an integer index"))
    elif num_sentences is not None and not 0 <= match < num_sentences:
        issues.append(
            SchemaIssue(
                f"{where}.matched_text_index",
                f"{match} is out of range for {num_sentences} sentences",
                "point it at a sentence of text_list (0-based)",
            )
        )
    if "matched_sim" in info and not _is_number(info["matched_sim"]):
        issues.append(SchemaIssue(f"{where}.matched_sim", "must be a finite number", "store a float"))
    for name in ("width", "height"):
        value = info.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            issues.append(SchemaIssue(f"{where}.{name}", f"got {value!r}", "store a non-negative integer"))
    if info.get("sha256", "") and not re.fullmatch(r"[0-9a-f]{64}", str(info["sha256"])):
        issues.append(
            SchemaIssue(f"{where}.sha256", "not a hex SHA-256", "store hashlib.sha256(bytes).hexdigest()")
        )
    return issues


def _check_similarity_matrix(matrix: Any, num_images: int, num_sentences: int | None) -> list[SchemaIssue]:
    if matrix is None:
        return []
    shape_fix = "store one row per image and one column per sentence, or null"
    if not isinstance(matrix, list) or len(matrix) != num_images:
        got = len(matrix) if isinstance(matrix, list) else type(matrix).__name__
        return [
            SchemaIssue("similarity_matrix", f"expected {num_images} rows (images), got {got}", shape_fix)
        ]
    for row_index, row in enumerate(matrix):
        if not isinstance(row, list) or not all(_is_number(v) for v in row):
            return [SchemaIssue(f"similarity_matrix[{row_index}]", "must be a list of numbers", shape_fix)]
        if num_sentences is not None and len(row) != num_sentences:
            message = f"has {len(row)} columns, expected {num_sentences} (sentences)"
            return [SchemaIssue(f"similarity_matrix[{row_index}]", message, shape_fix)]
    return []


def check_pair_dict(data: Any) -> list[SchemaIssue]:
    """Every schema problem of one img2dataset pair JSON dict (an empty list when it is valid)."""
    if not isinstance(data, dict):
        return [
            SchemaIssue("<root>", f"expected a JSON object, got {type(data).__name__}", "write one object")
        ]
    issues = []
    if not isinstance(data.get("caption"), str):
        issues.append(SchemaIssue("caption", "missing or not a string", "store the caption text as a string"))
    if data.get("url") is not None and not isinstance(data["url"], str):
        issues.append(SchemaIssue("url", "must be a string or null", "store the url as a string"))
    for name in ("width", "height"):
        value = data.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            issues.append(SchemaIssue(name, f"got {value!r}", "store a non-negative integer or null"))
    return issues
