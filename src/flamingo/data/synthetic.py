"""Small synthetic datasets: coloured shapes drawn with PIL, sentences about them, similarity matrices.

Used by tests and demos; everything is deterministic given the seed (PNG encoding is deterministic, and so is
JPEG for one Pillow version).
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from flamingo.data.mmc4 import document_to_mmc4
from flamingo.data.schema import EncodedImage, ImageInfo, ImageTextPair, InterleavedDocument
from flamingo.data.sft import Conversation, Message, SftShardWriter
from flamingo.data.shards import InterleavedShardWriter, PairShardWriter

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "bar")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (240, 140, 30),
    "white": (240, 240, 240),
    "cyan": (40, 210, 220),
}
FILLER_SENTENCES = (
    "The weather was mild all week.",
    "Several people visited the market on Sunday.",
    "This page was last updated in spring.",
    "Prices may vary between stores.",
    "The river runs along the old town wall.",
    "Read the instructions before you start.",
    "Our team answers questions by email.",
    "The museum opens at nine in the morning.",
)
_PFORMAT = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


def draw_shape(
    rng: random.Random, size: int = 32, shape: str | None = None, colour: str | None = None
) -> tuple[Image.Image, str, str]:
    """An RGB ``size`` x ``size`` image of one coloured shape on a dark background, with its shape and colour."""
    shape = shape or rng.choice(SHAPES)
    colour = colour or rng.choice(sorted(COLOURS))
    background = tuple(rng.randint(0, 50) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    half = rng.uniform(0.25, 0.4) * size
    cx, cy = rng.uniform(half, size - half), rng.uniform(half, size - half)
    box = (cx - half, cy - half, cx + half, cy + half)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - half), (cx + half, cy), (cx, cy + half), (cx - half, cy)], fill=fill)
    elif shape == "cross":
        draw.rectangle((cx - half / 3, cy - half, cx + half / 3, cy + half), fill=fill)
        draw.rectangle((cx - half, cy - half / 3, cx + half, cy + half / 3), fill=fill)
    else:
        draw.rectangle((cx - half, cy - half / 4, cx + half, cy + half / 4), fill=fill)
    return image, shape, colour


def encode_image(image: Image.Image, ext: str = "png", quality: int = 90) -> EncodedImage:
    """Encode a PIL image as ``ext`` (jpg, jpeg, png or webp)."""
    buffer = io.BytesIO()
    options = {"quality": quality} if ext in ("jpg", "jpeg", "webp") else {}
    image.save(buffer, format=_PFORMAT[ext], **options)
    return EncodedImage(buffer.getvalue(), ext)


def synthetic_document(
    rng: random.Random,
    doc_id: str,
    num_sentences: int = 5,
    num_images: int = 2,
    image_size: int = 32,
    ext: str = "png",
) -> InterleavedDocument:
    """A document whose images are matched one-to-one to random sentences that describe them.

    Matched similarities are drawn in [0.26, 0.40), all others in [0.0, 0.20), so the assignment that
    maximises similarity is the stored ``matched_text_index``.
    """
    if num_images > num_sentences:
        raise ValueError(f"num_images ({num_images}) must not exceed num_sentences ({num_sentences})")
    sentences = [rng.choice(FILLER_SENTENCES) for _ in range(num_sentences)]
    matched = rng.sample(range(num_sentences), num_images)
    infos, images, matrix = [], [], []
    for index, sentence_index in enumerate(matched):
        picture, shape, colour = draw_shape(rng, image_size)
        sentences[sentence_index] = f"A {colour} {shape} is shown here."
        row = [round(rng.uniform(0.0, 0.2), 4) for _ in range(num_sentences)]
        row[sentence_index] = round(rng.uniform(0.26, 0.4), 4)
        encoded = encode_image(picture, ext)
        images.append(encoded)
        matrix.append(row)
        infos.append(
            ImageInfo(
                member=f"{index}.{ext}",
                matched_text_index=sentence_index,
                matched_sim=row[sentence_index],
                raw_url=f"https://example.com/{doc_id}/{index}.{ext}",
                width=image_size,
                height=image_size,
                sha256=encoded.sha256(),
            )
        )
    return InterleavedDocument(
        id=doc_id,
        text_list=sentences,
        image_info=infos,
        similarity_matrix=matrix,
        url=f"https://example.com/{doc_id}",
        source="synthetic",
        images=images,
    )


def synthetic_documents(
    count: int, seed: int = 0, max_images: int = 3, image_size: int = 32
) -> list[InterleavedDocument]:
    """``count`` documents with ids ``doc000000``..., 1 to ``max_images`` images and 3 to 7 sentences."""
    rng = random.Random(seed)
    documents = []
    for index in range(count):
        num_images = rng.randint(1, max_images)
        num_sentences = rng.randint(max(3, num_images), 7)
        documents.append(synthetic_document(rng, f"doc{index:06d}", num_sentences, num_images, image_size))
    return documents


def synthetic_pair(rng: random.Random, key: str, image_size: int = 32, ext: str = "jpg") -> ImageTextPair:
    """An image of a coloured shape with a caption that names it."""
    picture, shape, colour = draw_shape(rng, image_size)
    caption = f"a {colour} {shape} on a dark background"
    return ImageTextPair(
        key=key,
        caption=caption,
        image=encode_image(picture, ext),
        url=f"https://example.com/{key}.{ext}",
        width=image_size,
        height=image_size,
        metadata={"key": key, "status": "success"},
    )


def write_synthetic_interleaved(
    out_dir: str | os.PathLike[str],
    num_documents: int,
    seed: int = 0,
    max_samples_per_shard: int = 100,
    prefix: str = "interleaved",
) -> list[Path]:
    """Write ``num_documents`` synthetic documents to interleaved shards; returns the shard paths."""
    with InterleavedShardWriter(out_dir, prefix, max_samples_per_shard) as writer:
        for document in synthetic_documents(num_documents, seed):
            writer.write(document)
    return writer.shard_paths


def write_synthetic_pairs(
    out_dir: str | os.PathLike[str],
    num_pairs: int,
    seed: int = 0,
    max_samples_per_shard: int = 100,
    prefix: str = "pairs",
) -> list[Path]:
    """Write ``num_pairs`` synthetic image-text pairs to img2dataset-layout shards; returns the shard paths."""
    rng = random.Random(seed)
    with PairShardWriter(out_dir, prefix, max_samples_per_shard) as writer:
        for index in range(num_pairs):
            writer.write(synthetic_pair(rng, f"{index:09d}"))
    return writer.shard_paths


def synthetic_conversation(rng: random.Random, conversation_id: str, image_size: int = 32) -> Conversation:
    """An instruction conversation about one or two shape images, with answers that the images decide.

    One image: "What is in the picture?" -> "A red circle.", sometimes followed by "What colour is it?" ->
    "It is red."; two images: "Do they have the same colour?" -> "Yes, both are red." / "No: red and blue."
    """
    if rng.random() < 0.6:
        picture, shape, colour = draw_shape(rng, image_size)
        messages = [
            Message("user", [0, "What is in the picture?"]),
            Message("assistant", [f"{'An' if colour[0] in 'aeiou' else 'A'} {colour} {shape}."]),
        ]
        if rng.random() < 0.5:
            messages += [Message("user", ["What colour is it?"]), Message("assistant", [f"It is {colour}."])]
        pictures = [picture]
    else:
        first, _, colour = draw_shape(rng, image_size)
        same = rng.random() < 0.5
        second, _, other = draw_shape(rng, image_size, colour=colour if same else None)
        answer = f"Yes, both are {colour}." if other == colour else f"No: {colour} and {other}."
        messages = [Message("user", [0, 1, "Do they have the same colour?"]), Message("assistant", [answer])]
        pictures = [first, second]
    images = [encode_image(picture, "png") for picture in pictures]
    return Conversation(conversation_id, messages, [f"{i}.png" for i in range(len(images))], images)


def write_synthetic_sft(
    out_dir: str | os.PathLike[str],
    num_conversations: int,
    seed: int = 0,
    max_samples_per_shard: int = 100,
    prefix: str = "sft",
) -> list[Path]:
    """Write ``num_conversations`` synthetic conversations to flamingo-sft/1 tar shards; returns their paths."""
    rng = random.Random(seed)
    with SftShardWriter(out_dir, prefix, max_samples_per_shard) as writer:
        for index in range(num_conversations):
            writer.write(synthetic_conversation(rng, f"conv{index:06d}"))
    return writer.shard_paths


def write_mmc4_tar(documents: Sequence[InterleavedDocument], path: str | os.PathLike[str]) -> Path:
    """Write documents as an OpenFlamingo MMC4 shard: one ``<id>.json`` per document with ``image_base64``."""
    path = Path(path)
    with tarfile.open(path, "w") as tar:
        for document in documents:
            data = json.dumps(document_to_mmc4(document, embed_images=True)).encode("utf-8")
            info = tarfile.TarInfo(f"{document.id}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_mmc4_jsonl(
    documents: Sequence[InterleavedDocument],
    jsonl_path: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
) -> Path:
    """Write documents as MMC4 JSONL (one per line) and their images as files in ``image_dir``."""
    jsonl_path, image_dir = Path(jsonl_path), Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    with open(jsonl_path, "w", encoding="utf-8") as handle:
        for document in documents:
            data = document_to_mmc4(document, embed_images=False)
            for info, image in zip(data["image_info"], document.images):
                (image_dir / info["image_name"]).write_bytes(image.data)
            handle.write(json.dumps(data) + "\n")
    return jsonl_path
