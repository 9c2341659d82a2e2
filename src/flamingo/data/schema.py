"""The shard schemas: interleaved documents and image-text pairs, as typed dataclasses.

An interleaved shard is a WebDataset tar. Members are grouped by key (the member path up to the first dot of
its basename); one document per key: ``<key>.json`` plus one member per image, ``<key>.<i>.<ext>``::

    doc000042.json     {"format": "flamingo-interleaved/1", "id": ..., "text_list": [...], "image_info": [...]}
    doc000042.0.jpg
    doc000042.1.png

The JSON uses MMC4's field names (``text_list``, ``image_info``, ``matched_text_index``, ``matched_sim``,
``similarity_matrix``) so that MMC4 code paths share it. ``image_info[i]["member"]`` is the member suffix after
the key (``"0.jpg"``). Pair shards follow img2dataset: ``<key>.jpg``, ``<key>.txt``, ``<key>.json``.

Validation collects :class:`SchemaIssue` objects (field, message, fix, reason) so that a validator can report
every problem of a file; :meth:`InterleavedDocument.from_dict` raises :class:`SchemaError` on the first one. The
reason is ``bad_field_type:<field>`` when a field holds the wrong JSON type (indices written ``[]``, so the
reasons stay a small fixed set), else ``schema_error`` (missing fields and bad values).
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
    """One problem of a sample: which field, what is wrong, how to fix it, and the reason it is counted under
    (one of :data:`flamingo.data.usable.REASONS`)."""

    field: str
    message: str
    fix: str
    reason: str = "schema_error"

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
    _sha256: tuple[bytes, str] | None = field(default=None, init=False, repr=False, compare=False)

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
        """Hex SHA-256 of ``data`` (computed once for the bytes object that ``data`` holds)."""
        if self._sha256 is None or self._sha256[0] is not self.data:
            self._sha256 = (self.data, hashlib.sha256(self.data).hexdigest())
        return self._sha256[1]

    def decode(self) -> Image.Image:
        """The decoded PIL image (fully loaded, original mode); decoded once and cached."""
        if self._decoded is None:
            image = Image.open(io.BytesIO(self.data))
            image.load()
            self._decoded = image
        return self._decoded

    def rgb(self) -> Image.Image:
        """The decoded image in RGB: the cached decode itself when it is RGB already (no copy), else a converted
        copy. Treat it as read-only."""
        image = self.decode()
        return image if image.mode == "RGB" else image.convert("RGB")


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
    """A JSON number (not a bool), finite as a float: JSON allows integers too large for one (1e400)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_INDEX = re.compile(r"\[\d+\]")


def type_issue(field: str, expected: str, value: Any, fix: str) -> SchemaIssue:
    """A field holding the wrong JSON type; counted as ``bad_field_type:<field with indices as []>``."""
    got = "null" if value is None else type(value).__name__
    return SchemaIssue(
        field, f"must be {expected}, got {got}", fix, f"bad_field_type:{_INDEX.sub('[]', field)}"
    )


def not_an_object(data: Any, fix: str = "write one JSON object per sample") -> SchemaIssue:
    got = "null" if data is None else type(data).__name__
    return SchemaIssue("<root>", f"expected a JSON object, got {got}", fix, "not_an_object")


def check_document_dict(data: Any) -> list[SchemaIssue]:
    """Every schema problem of one interleaved-document JSON dict (an empty list when it is valid)."""
    if not isinstance(data, dict):
        return [not_an_object(data)]
    issues: list[SchemaIssue] = []
    if data.get("format") != FORMAT:
        issues.append(
            SchemaIssue(
                "format", f"expected {FORMAT!r}, got {data.get('format')!r}", f'set "format": "{FORMAT}"'
            )
        )
    doc_id = data.get("id")
    if doc_id is not None and not isinstance(doc_id, str):
        issues.append(type_issue("id", "a string", doc_id, "give each document a string id"))
    elif not doc_id:
        issues.append(
            SchemaIssue("id", "missing or not a non-empty string", "give each document a string id")
        )
    for name in ("url", "source"):
        if data.get(name) is not None and not isinstance(data[name], str):
            issues.append(
                type_issue(name, "a string or null", data[name], f"store {name} as a string or null")
            )
    text_list = data.get("text_list")
    sentences_fix = "store the sentences as a list of strings"
    if text_list is None:
        issues.append(SchemaIssue("text_list", "missing", sentences_fix))
    elif not isinstance(text_list, list):
        issues.append(type_issue("text_list", "a list of strings", text_list, sentences_fix))
        text_list = None
    else:
        bad = next((i for i, sentence in enumerate(text_list) if not isinstance(sentence, str)), None)
        if bad is not None:
            expected = f"a list of strings (item {bad} is not)"
            issues.append(type_issue("text_list", expected, text_list[bad], sentences_fix))
            text_list = None
    image_info = data.get("image_info")
    images_fix = "store one object per image (may be empty)"
    if not isinstance(image_info, list):
        if image_info is None:
            issues.append(SchemaIssue("image_info", "missing", images_fix))
        else:
            issues.append(type_issue("image_info", "a list", image_info, images_fix))
        return issues
    num_sentences = len(text_list) if isinstance(text_list, list) else None
    for index, info in enumerate(image_info):
        issues.extend(_check_image_info(info, index, num_sentences))
    members = [info.get("member") for info in image_info if isinstance(info, dict)]
    members = [member for member in members if isinstance(member, str)]
    if len(set(members)) != len(members):
        issues.append(
            SchemaIssue("image_info[].member", "duplicate member names", "number images 0.jpg, 1.jpg...")
        )
    issues.extend(_check_similarity_matrix(data.get("similarity_matrix"), len(image_info), num_sentences))
    return issues


def _check_image_info(info: Any, index: int, num_sentences: int | None) -> list[SchemaIssue]:
    where = f"image_info[{index}]"
    if not isinstance(info, dict):
        return [type_issue(where, "an object", info, "store one object per image")]
    issues = []
    member = info.get("member")
    member_fix = f'name the image member "{index}.jpg" (the tar member is "<key>.{index}.jpg")'
    if member is not None and not isinstance(member, str):
        issues.append(type_issue(f"{where}.member", "a string", member, member_fix))
    elif member is None or not _MEMBER_PATTERN.match(member):
        issues.append(
            SchemaIssue(
                f"{where}.member",
                f"got {member!r}; expected '<i>.<ext>' with ext in {IMAGE_EXTENSIONS}",
                f'name the image member "{index}.jpg" (the tar member is "<key>.{index}.jpg")',
            )
        )
    match = info.get("matched_text_index")
    if match is None:
        issues.append(SchemaIssue(f"{where}.matched_text_index", "missing", "store an integer index"))
    elif not _is_int(match):
        issues.append(
            type_issue(f"{where}.matched_text_index", "an integer", match, "store an integer index")
        )
    elif num_sentences is not None and not 0 <= match < num_sentences:
        issues.append(
            SchemaIssue(
                f"{where}.matched_text_index",
                f"{match} is out of range for {num_sentences} sentences",
                "point it at a sentence of text_list (0-based)",
            )
        )
    sim = info.get("matched_sim", 0.0)
    if not isinstance(sim, int | float) or isinstance(sim, bool):
        issues.append(type_issue(f"{where}.matched_sim", "a number", sim, "store a float"))
    elif not _is_number(sim):
        issues.append(SchemaIssue(f"{where}.matched_sim", "must be a finite number", "store a float"))
    for name in ("width", "height"):
        value = info.get(name, 0)
        if not _is_int(value):
            issues.append(type_issue(f"{where}.{name}", "an integer", value, "store a non-negative integer"))
        elif value < 0:
            issues.append(SchemaIssue(f"{where}.{name}", f"got {value!r}", "store a non-negative integer"))
    digest = info.get("sha256")
    if digest is not None and not isinstance(digest, str):
        issues.append(
            type_issue(
                f"{where}.sha256", "a string or null", digest, "store hashlib.sha256(bytes).hexdigest()"
            )
        )
    elif digest and not re.fullmatch(r"[0-9a-f]{64}", digest):
        issues.append(
            SchemaIssue(f"{where}.sha256", "not a hex SHA-256", "store hashlib.sha256(bytes).hexdigest()")
        )
    return issues


def _check_similarity_matrix(matrix: Any, num_images: int, num_sentences: int | None) -> list[SchemaIssue]:
    if matrix is None:
        return []
    shape_fix = "store one row per image and one column per sentence, or null"
    if not isinstance(matrix, list):
        return [type_issue("similarity_matrix", "a list of rows or null", matrix, shape_fix)]
    if len(matrix) != num_images:
        message = f"expected {num_images} rows (images), got {len(matrix)}"
        return [SchemaIssue("similarity_matrix", message, shape_fix)]
    for row_index, row in enumerate(matrix):
        where = f"similarity_matrix[{row_index}]"
        if not isinstance(row, list):
            return [type_issue(where, "a list of numbers", row, shape_fix)]
        bad = next((v for v in row if not isinstance(v, int | float) or isinstance(v, bool)), row)
        if bad is not row:
            return [type_issue(f"{where}[]", "a number", bad, shape_fix)]
        if not all(_is_number(v) for v in row):
            return [SchemaIssue(where, "must be a list of finite numbers", shape_fix)]
        if num_sentences is not None and len(row) != num_sentences:
            message = f"has {len(row)} columns, expected {num_sentences} (sentences)"
            return [SchemaIssue(f"similarity_matrix[{row_index}]", message, shape_fix)]
    return []


def check_pair_dict(data: Any) -> list[SchemaIssue]:
    """Every schema problem of one img2dataset pair JSON dict (an empty list when it is valid)."""
    if not isinstance(data, dict):
        return [not_an_object(data)]
    issues = []
    caption = data.get("caption")
    caption_fix = "store the caption text as a string (in <key>.txt or the JSON's caption)"
    if caption is None:
        issues.append(SchemaIssue("caption", "missing", caption_fix))
    elif not isinstance(caption, str):
        issues.append(type_issue("caption", "a string", caption, caption_fix))
    if data.get("url") is not None and not isinstance(data["url"], str):
        issues.append(type_issue("url", "a string or null", data["url"], "store the url as a string"))
    for name in ("width", "height"):
        value = data.get(name)
        if value is not None and not _is_int(value):
            issues.append(
                type_issue(name, "an integer or null", value, "store a non-negative integer or null")
            )
        elif value is not None and value < 0:
            issues.append(SchemaIssue(name, f"got {value!r}", "store a non-negative integer or null"))
    return issues
