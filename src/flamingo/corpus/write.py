"""Write stage: documents -> ``flamingo-interleaved/1`` JSON dicts and WebDataset shards.

``to_shard_record`` gives the JSON dict and the image members (``{"0.jpg": bytes, ...}``); the shards are
written by ``flamingo.data.shards.InterleavedShardWriter`` (tar member ``<key>.<i>.<ext>``).

Images are listed in the order of the sentences they match (``matched_text_index`` ascending), so image
``i`` is the ``i``-th ``<image>`` of the interleaved text (OpenFlamingo ordered them by page position,
which mispairs them when the assignment is not monotone). GIF and BMP images, which the shard schema
does not allow, are re-encoded as PNG (first frame). Keys come from the shard name and the document's
position, never from page content.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

from flamingo.corpus.document import ImageRef, WebDocument
from flamingo.corpus.imagecheck import EXTENSIONS, open_rgb

FORMAT = "flamingo-interleaved/1"
_SHARD_FORMATS = {"jpeg", "png", "webp"}


def _shard_image(image: ImageRef) -> tuple[bytes, str]:
    """The bytes and extension stored in the shard (GIF/BMP re-encoded as PNG)."""
    data = image.load_bytes()
    if image.format in _SHARD_FORMATS:
        return data, EXTENSIONS[image.format]
    buffer = io.BytesIO()
    open_rgb(data).save(buffer, format="PNG")
    return buffer.getvalue(), "png"


def _ordered_images(doc: WebDocument) -> list[ImageRef]:
    images = doc.alive_images
    missing = [im.url for im in images if "matched_text_index" not in im.metadata]
    if missing:
        raise ValueError(
            f"document {doc.id}: images {missing[:3]} have no matched_text_index; run interleave first"
        )
    return sorted(images, key=lambda im: im.metadata["matched_text_index"])


def to_shard_record(doc: WebDocument) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The document's JSON dict and its image members ``{"<i>.<ext>": bytes}`` (after interleave)."""
    info: list[dict[str, Any]] = []
    members: dict[str, bytes] = {}
    matrix: list[list[float]] = []
    for i, image in enumerate(_ordered_images(doc)):
        data, ext = _shard_image(image)
        member = f"{i}.{ext}"
        members[member] = data
        info.append(
            {
                "member": member,
                "raw_url": image.url,
                "matched_text_index": int(image.metadata["matched_text_index"]),
                "matched_sim": float(image.metadata["matched_sim"]),
                "width": int(image.width or 0),
                "height": int(image.height or 0),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        matrix.append([float(v) for v in image.metadata.get("similarities", [])])
    record = {
        "format": FORMAT,
        "id": doc.id,
        "url": doc.url or None,
        "text_list": list(doc.sentences),
        "image_info": info,
        # Converted sources placed by layout (OBELICS) have no similarities: the matrix is then unknown.
        "similarity_matrix": matrix
        if all("similarities" in im.metadata for im in doc.alive_images)
        else None,
        "source": doc.source or None,
    }
    return record, members


def to_json_dict(doc: WebDocument) -> dict[str, Any]:
    """Only the JSON dict of ``to_shard_record``."""
    return to_shard_record(doc)[0]


def document_key(shard: str, index: int) -> str:
    """The WebDataset key of the ``index``-th document of ``shard`` (letters, digits, '-' and '_')."""
    return f"{shard}_{index:07d}"


def write_shard(
    docs: list[WebDocument], out_dir: str | os.PathLike[str], shard: str, max_documents_per_tar: int
) -> list[Path]:
    """Write ``docs`` as ``<out_dir>/<shard>-NNNNNN.tar`` files (old ones of this shard are replaced)."""
    from flamingo.data.schema import EncodedImage, InterleavedDocument
    from flamingo.data.shards import InterleavedShardWriter

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{shard}-*.tar"):
        old.unlink()
    with InterleavedShardWriter(folder, prefix=shard, max_samples_per_shard=max_documents_per_tar) as writer:
        for index, doc in enumerate(docs):
            record, members = to_shard_record(doc)
            document = InterleavedDocument.from_dict(record, source=shard)
            document.images = [
                EncodedImage(members[i["member"]], i["member"].split(".", 1)[1]) for i in record["image_info"]
            ]
            writer.write(document, key=document_key(shard, index))
    return writer.shard_paths
