"""Conversion between MMC4 document dicts and :class:`InterleavedDocument`.

MMC4 stores one JSON object per document: ``url``, ``text_list``, ``image_info`` (``image_name``, ``raw_url``,
``matched_text_index``, ``matched_sim``, optional ``face_detections``) and ``similarity_matrix`` (images x
sentences). OpenFlamingo's converted tar shards add ``image_info[i]["image_base64"]`` with the image bytes;
the original release ships JSONL files plus a folder of images named by ``image_name``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from flamingo.data.schema import (
    FORMAT,
    IMAGE_EXTENSIONS,
    EncodedImage,
    InterleavedDocument,
    SchemaIssue,
    check_document_dict,
    not_an_object,
    type_issue,
)


def is_mmc4_dict(data: Any) -> bool:
    """Whether a JSON object looks like an MMC4 document (rather than one of ours)."""
    return isinstance(data, dict) and "format" not in data and "text_list" in data and "image_info" in data


def sniff_image_ext(data: bytes, name: Any = None) -> str:
    """The extension of an image: from ``name`` when it is a file name with a known one, else from the magic
    bytes (a ``name`` that is not a string, as in malformed JSON, is ignored)."""
    if isinstance(name, str) and "." in name:
        ext = name.rsplit(".", 1)[1].lower()
        if ext in IMAGE_EXTENSIONS:
            return ext
    if data.startswith(b"\x89PNG"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "jpg"


def _image_infos(data: dict[str, Any]) -> list[Any]:
    """``image_info`` when it is a list (:func:`check_mmc4_dict` reports it otherwise)."""
    infos = data.get("image_info")
    return infos if isinstance(infos, list) else []


def decode_base64_images(data: dict[str, Any]) -> tuple[list[EncodedImage], list[int]]:
    """The images embedded in an MMC4 shard document, and the indices whose ``image_base64`` is unusable."""
    images, bad = [], []
    for index, info in enumerate(_image_infos(data)):
        encoded = info.get("image_base64") if isinstance(info, dict) else None
        try:
            raw = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
        except (binascii.Error, ValueError):
            raw = b""
        if not raw:
            bad.append(index)
        images.append(EncodedImage(raw, sniff_image_ext(raw, info.get("image_name") if raw else None)))
    return images, bad


def mmc4_to_dict(data: dict[str, Any], doc_id: str, images: list[EncodedImage]) -> dict[str, Any]:
    """Our JSON form of an MMC4 document (member names ``<i>.<ext>``, hashes from ``images`` when given)."""
    infos = []
    for index, info in enumerate(_image_infos(data)):
        if not isinstance(info, dict):
            infos.append(info)
            continue
        image = images[index] if index < len(images) else None
        ext = image.ext if image is not None else sniff_image_ext(b"", info.get("image_name"))
        infos.append(
            {
                "member": f"{index}.{ext}",
                "raw_url": info.get("raw_url"),
                "matched_text_index": info.get("matched_text_index"),
                "matched_sim": info.get("matched_sim", 0.0),
                "width": 0,
                "height": 0,
                "sha256": image.sha256() if image is not None and image.data else "",
            }
        )
    return {
        "format": FORMAT,
        "id": doc_id,
        "url": data.get("url"),
        "text_list": data.get("text_list"),
        "image_info": infos,
        "similarity_matrix": data.get("similarity_matrix"),
        "source": data.get("source", "mmc4"),
    }


def check_mmc4_dict(data: Any) -> list[SchemaIssue]:
    """Schema problems of an MMC4 document, named with MMC4's own field names."""
    if not isinstance(data, dict):
        return [not_an_object(data)]
    converted = mmc4_to_dict(data, "mmc4", [])
    if not isinstance(data.get("image_info"), list):
        converted["image_info"] = data.get("image_info")  # reported with MMC4's own value
    issues = [i for i in check_document_dict(converted) if not i.field.endswith(".member")]
    for index, info in enumerate(_image_infos(data)):
        if not isinstance(info, dict):
            continue
        where = f"image_info[{index}]"
        name, encoded = info.get("image_name"), info.get("image_base64")
        if name is not None and not isinstance(name, str):
            issues.append(
                type_issue(f"{where}.image_name", "a file name string", name, "store the file name")
            )
        if encoded is not None and not isinstance(encoded, str):
            fix = "store the image bytes base64-encoded as a string"
            issues.append(type_issue(f"{where}.image_base64", "a base64 string", encoded, fix))
        if name is None and encoded is None:
            issues.append(
                SchemaIssue(f"{where}.image_name", "missing", "store the image file name or its bytes")
            )
    return issues


def document_from_mmc4(data: dict[str, Any], doc_id: str, images: list[EncodedImage]) -> InterleavedDocument:
    """An :class:`InterleavedDocument` from an MMC4 dict and its encoded images (raises ``SchemaError``)."""
    document = InterleavedDocument.from_dict(mmc4_to_dict(data, doc_id, images), source=doc_id)
    document.images = list(images)
    return document


def document_to_mmc4(document: InterleavedDocument, embed_images: bool) -> dict[str, Any]:
    """An MMC4 dict of ``document``: image bytes in ``image_base64`` or file names ``<id>_<i>.<ext>``."""
    infos = []
    for index, info in enumerate(document.image_info):
        entry: dict[str, Any] = {
            "image_name": f"{document.id}_{index}.{info.member.rsplit('.', 1)[1]}",
            "raw_url": info.raw_url,
            "matched_text_index": info.matched_text_index,
            "matched_sim": info.matched_sim,
        }
        if embed_images:
            entry["image_base64"] = base64.b64encode(document.images[index].data).decode("ascii")
        infos.append(entry)
    out: dict[str, Any] = {"url": document.url, "text_list": list(document.text_list), "image_info": infos}
    if document.similarity_matrix is not None:
        out["similarity_matrix"] = document.similarity_matrix
    return out
