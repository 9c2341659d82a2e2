"""Instruction data for supervised fine-tuning: conversations with images, rendered for Flamingo.

Format ``flamingo-sft/1``: one JSON object per conversation, stored either in WebDataset tar shards
(``<key>.json`` plus the images as members ``<key>.<i>.<ext>``, like interleaved shards) or in JSONL files (one
object per line, images as file paths relative to the JSONL file's folder, or absolute)::

    {"format": "flamingo-sft/1", "id": "conv000042",
     "images": ["0.png", "1.png"],                 # tar: member suffixes; JSONL: paths
     "messages": [
       {"role": "user", "content": [{"type": "image", "image": 0}, {"type": "text", "text": "What is this?"}]},
       {"role": "assistant", "content": "A red circle."},
       {"role": "user", "content": [{"type": "text", "text": "And this?"}, {"type": "image", "image": 1}]},
       {"role": "assistant", "content": "A blue square."}]}

``content`` is a string or a list of parts (``text`` / ``image``, the latter an index into ``images``);
assistant turns hold text only. The first turn is the user's, and at least one assistant turn must follow.

Rendering (:func:`render_conversation`, template :class:`ChatTemplate`): images that open a user turn go before
the role prefix (so a conversation that opens with an image starts with ``<image>``, as image-text pairs do,
and can be packed), other images stay where they are; each answer ends with ``<|endofchunk|>``, the
conversation with the tokenizer's eos::

    <image>User: What is this? Assistant: A red circle.<|endofchunk|>User: And this?<image> Assistant: A blue
    square.<|endofchunk|><eos>

Only the answers and their ``<|endofchunk|>`` are supervised (:func:`flamingo.data.labels.make_response_labels`
from the answers' character spans). At inference, end the prompt with the assistant prefix without its trailing
space (``render_conversation(..., for_generation=True)``): the model then writes `` A red circle.`` and stops
at ``<|endofchunk|>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from flamingo.data.interleaved import EOC_TOKEN, IMAGE_TOKEN, TokenizedSample, _token_id
from flamingo.data.labels import spans_to_token_mask
from flamingo.data.remote import is_url
from flamingo.data.schema import (
    IMAGE_EXTENSIONS,
    EncodedImage,
    SchemaError,
    SchemaIssue,
    not_an_object,
    type_issue,
)
from flamingo.data.shards import FileReadLog, _json_bytes, _TarShardWriter

SFT_FORMAT = "flamingo-sft/1"
ROLES = ("user", "assistant")


@dataclass
class ChatTemplate:
    """How turns become text (the ``<image>`` and ``<|endofchunk|>`` tokens are placed by the renderer)."""

    user_prefix: str = "User: "
    """Text before each user turn (after the images that open it)."""
    assistant_prefix: str = "Assistant: "
    """Text before each answer; not supervised."""
    separator: str = " "
    """Text between a user turn and the next prefix."""


@dataclass
class Message:
    """One turn: ``parts`` are strings (text) and ints (indices into the conversation's images)."""

    role: str
    parts: list[str | int]


@dataclass
class Conversation:
    """A parsed conversation; ``images`` holds the encoded images when read from a shard or file."""

    id: str
    messages: list[Message]
    image_refs: list[str]
    """Tar member suffixes (``0.png``) or file paths, one per image."""
    images: list[EncodedImage] = field(default_factory=list, repr=False)


@dataclass
class RenderedConversation:
    """The training text, the character spans that are supervised, and the image indices in token order."""

    text: str
    response_spans: list[tuple[int, int]]
    """``[start, end)`` of each answer and its ``<|endofchunk|>`` in ``text``."""
    image_order: list[int]
    """Index into ``Conversation.images`` of each ``<image>`` token of ``text``, in order."""


# ---------------------------------------------------------------------------------------------- parsing


def _parts(content: Any, where: str) -> tuple[list[str | int], list[SchemaIssue]]:
    if isinstance(content, str):
        return [content], []
    if content is None:
        return [], [SchemaIssue(where, "missing", 'write "text" or [{...}]')]
    if not isinstance(content, list):
        return [], [type_issue(where, "a string or a list of parts", content, 'write "text" or [{...}]')]
    parts: list[str | int] = []
    issues = []
    for index, part in enumerate(content):
        if not isinstance(part, dict):
            fix = 'write {"type": "text", "text": "..."} or {"type": "image", "image": <index>}'
            issues.append(type_issue(f"{where}[{index}]", "an object", part, fix))
            continue
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif kind == "image" and isinstance(part.get("image"), int) and not isinstance(part["image"], bool):
            parts.append(part["image"])
        else:
            fix = 'use {"type": "text", "text": "..."} or {"type": "image", "image": <index into images>}'
            issues.append(SchemaIssue(f"{where}[{index}]", f"unknown part {part!r}", fix))
    return parts, issues


def check_conversation_dict(data: Any) -> tuple[list[Message], list[SchemaIssue]]:
    """The messages of one ``flamingo-sft/1`` dict and every schema problem found (none when valid)."""
    if not isinstance(data, dict):
        return [], [not_an_object(data, "write one object a conversation")]
    issues = []
    if data.get("format") != SFT_FORMAT:
        message = f"expected {SFT_FORMAT!r}, got {data.get('format')!r}"
        issues.append(SchemaIssue("format", message, f'set "format": "{SFT_FORMAT}"'))
    conversation_id = data.get("id")
    if conversation_id is not None and not isinstance(conversation_id, str):
        issues.append(type_issue("id", "a string", conversation_id, "give each conversation a string id"))
    elif not conversation_id:
        issues.append(SchemaIssue("id", "missing or not a non-empty string", "give each conversation an id"))
    images = data.get("images", [])
    images_fix = 'write ["0.png"]'
    if not isinstance(images, list):
        issues.append(type_issue("images", "a list of member names or paths", images, images_fix))
        images = []
    elif not all(isinstance(i, str) and i for i in images):
        bad = next(i for i, ref in enumerate(images) if not (isinstance(ref, str) and ref))
        if isinstance(images[bad], str):
            issues.append(SchemaIssue(f"images[{bad}]", "is empty", images_fix))
        else:
            issues.append(type_issue(f"images[{bad}]", "a member name or path", images[bad], images_fix))
        images = []
    raw = data.get("messages")
    turns_fix = "store the turns in order"
    if raw is not None and not isinstance(raw, list):
        return [], [*issues, type_issue("messages", "a list of turns", raw, turns_fix)]
    if not raw:
        return [], [*issues, SchemaIssue("messages", "must be a non-empty list", turns_fix)]
    messages = []
    for index, turn in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(turn, dict):
            issues.append(type_issue(where, "an object", turn, 'write {"role": ..., "content": ...}'))
            continue
        role = turn.get("role")
        if role is not None and not isinstance(role, str):
            issues.append(type_issue(f"{where}.role", "a string", role, f"use one of {ROLES}"))
            continue
        if role not in ROLES:
            issues.append(SchemaIssue(f"{where}.role", f"got {role!r}", f"use one of {ROLES}"))
            continue
        parts, found = _parts(turn.get("content"), f"{where}.content")
        issues += found
        bad = [p for p in parts if isinstance(p, int) and not 0 <= p < len(images)]
        if bad:
            fix = f"use an index below {len(images)}, the number of entries of images"
            issues.append(SchemaIssue(f"{where}.content", f"image index {bad[0]} out of range", fix))
        if role == "assistant" and any(isinstance(p, int) for p in parts):
            issues.append(
                SchemaIssue(f"{where}.content", "an answer holds an image", "move it to a user turn")
            )
        messages.append(Message(role, parts))
    roles = [m.role for m in messages]
    if roles and (roles[0] != "user" or "assistant" not in roles):
        fix = "start with a user turn and include at least one assistant answer"
        issues.append(SchemaIssue("messages", "must open with a user turn and hold an answer", fix))
    return messages, issues


def conversation_from_dict(data: Any, source: str = "<dict>", key: str | None = None) -> Conversation:
    """Parse and validate; raises :class:`SchemaError` naming the first bad field, the source and the key."""
    messages, issues = check_conversation_dict(data)
    if issues:
        raise SchemaError(issues[0], source, key)
    return Conversation(data["id"], messages, list(data.get("images", [])))


def attach_images(conversation: Conversation, members: dict[str, bytes], folder: Path) -> list[int]:
    """Fill ``conversation.images`` from tar ``members`` or files under ``folder``; returns missing indices."""
    images, missing = [], []
    for index, ref in enumerate(conversation.image_refs):
        ext = ref.rsplit(".", 1)[-1].lower()
        data = members.get(ref)
        if data is None:
            path = Path(ref) if Path(ref).is_absolute() else folder / ref
            try:  # a name the file system refuses (too long, ...) names no file
                data = path.read_bytes() if path.is_file() else None
            except OSError:
                data = None
        if data is None or ext not in IMAGE_EXTENSIONS:
            missing.append(index)
        images.append(EncodedImage(data or b"", ext))
    conversation.images = images
    return missing


def iter_jsonl_samples(path: Path | str, log: FileReadLog) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {"json": line}) for each non-empty line of a JSONL file; keys are ``<stem>-<line number>``.

    The raw-sample view of a JSONL file, like :func:`flamingo.data.shards.iter_tar_samples` for tars (the loader
    shuffles, splits and resumes both alike). A missing or unreadable file counts in ``log``. JSONL files are
    local only (their images are files next to them); a URL counts as ``unreadable_file``.
    """
    if is_url(path):
        fix = "copy the file and its images, or write them as tar shards (flamingo.data.sft.SftShardWriter)"
        log.skip("unreadable_file", f"{path}: JSONL conversations are read from local disk; {fix}")
        return
    path = Path(path)
    if not path.is_file():
        log.skip("missing_file", f"{path} does not exist")
        return
    stem = path.name.split(".", 1)[0]
    try:
        with open(path, "rb") as handle:
            for number, line in enumerate(handle):
                if line.strip():
                    yield f"{stem}-{number:07d}", {"json": line}
    except OSError as error:
        log.skip("unreadable_file", f"{path}: {error}")


# ---------------------------------------------------------------------------------------------- rendering


def render_conversation(
    conversation: Conversation,
    template: ChatTemplate | None = None,
    eos_token: str = "",
    for_generation: bool = False,
    image_token: str = IMAGE_TOKEN,
    eoc_token: str = EOC_TOKEN,
) -> RenderedConversation:
    """The conversation as Flamingo text (see the module docstring) with its supervised character spans.

    ``for_generation``: a prompt that ends with the assistant prefix (trailing whitespace removed), for a
    conversation whose last turn is the user's; nothing is supervised and no eos is added.
    """
    template = template or ChatTemplate()
    text, spans, order = "", [], []
    for message in conversation.messages:
        if message.role == "assistant":
            text += template.assistant_prefix
            start = len(text)
            text += " ".join(str(p).strip() for p in message.parts) + eoc_token
            spans.append((start, len(text)))
            continue
        parts = list(message.parts)
        while parts and isinstance(parts[0], int):  # opening images go before the role prefix
            order.append(parts.pop(0))
            text += image_token
        body, previous_text = template.user_prefix, False
        for part in parts:
            if isinstance(part, int):
                order.append(part)
                body += image_token
                previous_text = False
            else:
                body += (" " if previous_text else "") + part.strip()
                previous_text = True
        text += body.rstrip() + template.separator
    if for_generation:
        if conversation.messages[-1].role != "user":
            raise ValueError(
                f"conversation {conversation.id!r}: a generation prompt must end with a user turn"
            )
        return RenderedConversation(text + template.assistant_prefix.rstrip(), [], order)
    return RenderedConversation(text + eos_token, spans, order)


def tokenize_conversation(
    rendered: RenderedConversation, tokenizer: Any, max_tokens: int, image_token: str = IMAGE_TOKEN
) -> tuple[TokenizedSample, torch.Tensor, list[int]]:
    """Token ids padded to ``max_tokens``, the (s,) bool mask of tokens inside an answer span, and the indices
    of the images whose ``<image>`` token survived truncation (in token order).

    Needs a fast tokenizer: the answer spans are mapped to tokens through the character offsets, so the text
    is tokenized whole, exactly as a prompt is at inference (no per-segment tokenization seams).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            "instruction (sft) sources need a fast tokenizer: answers are found by character offsets"
        )
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; add one with tokenizer.add_special_tokens(...)")
    image_id = _token_id(tokenizer, image_token)
    encoded = tokenizer(
        rendered.text,
        max_length=max_tokens,
        truncation=True,
        padding="max_length",
        return_offsets_mapping=True,
        return_tensors="pt",
    )
    input_ids, attention_mask = encoded["input_ids"][0].long(), encoded["attention_mask"][0].long()
    offsets = encoded["offset_mapping"][0]  # (s, 2) character [start, end) of each token
    mask = spans_to_token_mask(offsets, rendered.response_spans) & attention_mask.bool()
    kept = int(((input_ids == image_id) & attention_mask.bool()).sum())
    left = getattr(tokenizer, "truncation_side", "right") == "left"
    order = rendered.image_order[len(rendered.image_order) - kept :] if left else rendered.image_order[:kept]
    return TokenizedSample(input_ids, attention_mask, []), mask, order


# ---------------------------------------------------------------------------------------------- writing


def conversation_to_dict(conversation: Conversation) -> dict[str, Any]:
    """The ``flamingo-sft/1`` JSON dict of a conversation."""
    messages = []
    for message in conversation.messages:
        parts = [
            {"type": "image", "image": p} if isinstance(p, int) else {"type": "text", "text": p}
            for p in message.parts
        ]
        messages.append({"role": message.role, "content": parts})
    return {
        "format": SFT_FORMAT,
        "id": conversation.id,
        "images": conversation.image_refs,
        "messages": messages,
    }


class SftShardWriter(_TarShardWriter):
    """Writes conversations with their images to tar shards (``<key>.json`` + ``<key>.<i>.<ext>``)."""

    def write(self, conversation: Conversation, key: str | None = None) -> str:
        key = key if key is not None else conversation.id
        if len(conversation.images) != len(conversation.image_refs):
            raise ValueError(
                f"[{key}]: {len(conversation.image_refs)} image refs but {len(conversation.images)}"
            )
        refs = [f"{i}.{image.ext}" for i, image in enumerate(conversation.images)]
        data = conversation_to_dict(Conversation(conversation.id, conversation.messages, refs))
        _, issues = check_conversation_dict(data)
        if issues:
            raise SchemaError(issues[0], f"{self.prefix} shard", key)
        members = [("json", _json_bytes(data))]
        members += [(ref, image.data) for ref, image in zip(refs, conversation.images)]
        self._add_sample(key, members)
        return key


def decode_images(conversation: Conversation, order: list[int]) -> list[Image.Image]:
    """The RGB images for the ``<image>`` tokens, in token order (each decoded once)."""
    return [conversation.images[i].rgb() for i in order]
