"""Whether a raw sample can be trained on: the one check shared by the trainer's loader, the shard readers and
``flamingo data validate``, so that all of them skip the same samples for the same reasons.

A raw sample is what a shard holds under one key, ``{suffix: bytes}`` (``{"json": ..., "0.png": ...}``).
:func:`check_sample` parses it as an interleaved document (ours or MMC4), an image-text pair or an instruction
conversation and returns a :class:`Checked`: the parsed sample, or the problem that makes it unusable. Every
problem is a :class:`~flamingo.data.schema.SchemaIssue` whose ``reason`` is one of :data:`REASONS`.

Given a tokenizer (:class:`SampleSettings`), the check goes on to build the training sequence exactly as the
loader trains on it: image selection, text, tokenization to ``max_tokens`` and labels. A sample whose every
``<image>`` marker the truncation cuts away is unusable (``image_past_truncation``). Samples that are sound but
left out by the training settings (no image above the similarity threshold, no supervised token, the random
drop of one-image documents) are not problems: they are counted under :data:`SETTINGS_REASONS`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from flamingo.data.interleaved import (
    InterleavedConfig,
    RandomSource,
    _token_id,
    build_interleaved_text,
    match_images,
    tokenize_interleaved,
    tokenize_pair,
)
from flamingo.data.labels import make_labels, make_response_labels
from flamingo.data.mmc4 import check_mmc4_dict, decode_base64_images, document_from_mmc4, is_mmc4_dict
from flamingo.data.schema import (
    IMAGE_EXTENSIONS,
    EncodedImage,
    ImageTextPair,
    InterleavedDocument,
    SchemaIssue,
    check_document_dict,
    check_pair_dict,
    not_an_object,
)
from flamingo.data.sft import (
    SFT_FORMAT,
    ChatTemplate,
    Conversation,
    attach_images,
    check_conversation_dict,
    decode_images,
    render_conversation,
    tokenize_conversation,
)
from flamingo.model.loss import IGNORE_INDEX

SampleKind = Literal["interleaved", "pairs", "sft"]

REASONS: dict[str, str] = {
    "missing_file": "a shard path names no file",
    "unreadable_file": "the file is not a (gzipped) tar, or cannot be read",
    "truncated_tar": "the tar ends early; the samples before the cut are still read",
    "read_failed": "a remote shard or pipe kept failing after its retries; the samples before are still read",
    "missing_member": "the sample has no .json (a pair: no image), or an image its JSON names is absent",
    "bad_json": "the .json member is not valid UTF-8 JSON",
    "not_an_object": "the JSON is valid but not an object (null, a list, a string, a number)",
    "bad_field_type": "bad_field_type:<field>: a field holds the wrong JSON type (indices written [])",
    "schema_error": "a field is missing or holds a bad value (an index out of range, a wrong format tag, ...)",
    "sha256_mismatch": "an image's bytes do not match the sha256 stored for it",
    "corrupt_image": "an image does not decode",
    "image_marker_mismatch": "the text holds <image> markers of its own: markers and images would not pair up",
    "image_past_truncation": "tokenized to max_tokens, the text loses every <image> marker it has",
    "bad_sample": "an unexpected error while preparing the sample",
}
"""Why a sample is unusable; ``bad_field_type`` is written ``bad_field_type:<field>``."""

SETTINGS_REASONS: dict[str, str] = {
    "no_images": "no image is left after the selection (size, similarity, one image per sentence)",
    "single_image_dropped": "a document left with one image, dropped at random (single_image_drop_prob)",
    "no_supervised_tokens": "the truncated sequence has no token the loss counts",
    "image_too_small": "an image under min_image_bytes, left out",
    "image_unassigned": "an image the Hungarian assignment gives no sentence, left out",
    "image_below_threshold": "an image less similar to its sentence than sim_threshold, left out",
    "image_same_sentence": "a second image for one sentence (the more similar one is kept), left out",
    "image_over_max": "an image beyond max_images, left out",
    "image_past_truncation": "an image whose <image> marker the truncation cuts, left out (others stay)",
}
"""Sound samples and images that the training settings leave out: counted, never problems."""

ImageErrors = (OSError, ValueError, Image.DecompressionBombError)


@dataclass
class SampleSettings:
    """How :func:`check_sample` reads a sample and, with a ``tokenizer``, prepares it for training.

    The loader builds these from a data source's config (:func:`flamingo.data.loader.sample_settings`), and
    ``flamingo data validate --config`` takes them from the same place.
    """

    kind: Literal["auto", "interleaved", "pairs", "sft"] = "auto"
    """``auto``: a pair when the sample has an image member ``<key>.jpg`` (or png...), a conversation when its
    JSON says ``flamingo-sft/1``, else an interleaved document."""
    verify_images: bool = True
    """Decode every image (and check its stored sha256)."""
    drop_bad_images: bool = False
    """Interleaved documents: keep the document without its missing or corrupt images."""
    tokenizer: Any = None
    """The trainer's tokenizer; None checks the structure only (no selection, truncation or labels)."""
    max_tokens: int = 256
    """Sequence length the text is truncated to."""
    interleaved: InterleavedConfig = field(default_factory=InterleavedConfig)
    """Image selection of interleaved documents (its ``image_token`` is the marker looked for in texts)."""
    template: ChatTemplate = field(default_factory=ChatTemplate)
    """How conversations are rendered."""
    image_token_id: int | None = None
    """Id of ``<image>``; None: the tokenizer's."""
    eoc_token_id: int | None = None
    """Id of ``<|endofchunk|>``; None: the tokenizer's."""


@dataclass
class Prepared:
    """A sample as the trainer takes it: ``input_ids``, ``attention_mask``, ``labels`` (s,) and the RGB
    images of its ``<image>`` tokens, in token order."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    images: list[Image.Image]


@dataclass
class Checked:
    """What :func:`check_sample` found out about one raw sample."""

    key: str
    kind: SampleKind
    sample: InterleavedDocument | ImageTextPair | Conversation | None = None
    """The parsed sample, set as soon as its JSON follows the schema (a later check may still fail)."""
    problems: list[SchemaIssue] = field(default_factory=list)
    """Every problem found; when the sample is skipped the first one says why."""
    skipped: SchemaIssue | None = None
    """The problem that makes the sample unusable (its ``reason`` is in :data:`REASONS`), or None."""
    dropped: list[SchemaIssue] = field(default_factory=list)
    """Missing or corrupt images removed from a kept document (``drop_bad_images``)."""
    left_out: str | None = None
    """Why the training settings leave a sound sample out (a key of :data:`SETTINGS_REASONS`), or None."""
    prepared: Prepared | None = None
    """The training sequence, when the settings have a tokenizer and the sample is used."""

    @property
    def reason(self) -> str | None:
        """The reason the sample is unusable, or None."""
        return self.skipped.reason if self.skipped is not None else None

    @property
    def usable(self) -> bool:
        """Neither skipped nor left out by the settings."""
        return self.skipped is None and self.left_out is None

    def fail(self, *problems: SchemaIssue) -> Checked:
        """Record ``problems``; the first problem ever recorded is why the sample is skipped."""
        self.problems.extend(problems)
        if self.skipped is None and problems:
            self.skipped = problems[0]
        return self


def check_sample(
    key: str,
    members: Mapping[str, bytes],
    settings: SampleSettings | None = None,
    *,
    source: str = "<sample>",
    counts: Counter[str] | None = None,
    rng: Callable[[str], RandomSource] | None = None,
) -> Checked:
    """Parse and check one raw sample; with a tokenizer in ``settings``, prepare it for training too.

    Args:
        key: the sample's key in its shard.
        members: its members, ``{suffix: bytes}`` (a JSONL line is ``{"json": line}``).
        settings: what the sample is and how it is trained on (default: structure checks, kind guessed).
        source: the shard's path (conversations in JSONL files name their images relative to it).
        counts: receives the :data:`SETTINGS_REASONS` counts (samples and images the settings leave out).
        rng: the random source of a document id, for the one-image drop; None never drops.

    Never raises on bad input: every problem becomes a :class:`SchemaIssue` in the result.
    """
    settings = settings or SampleSettings()
    kind, data, json_problem = _kind_and_json(members, settings)
    checked = Checked(key, kind)
    try:
        if kind == "pairs":
            _check_pair(checked, members, data, json_problem, settings)
        elif kind == "sft":
            _check_conversation(checked, members, data, json_problem, settings, source)
        else:
            _check_document(checked, members, data, json_problem, settings, source)
        if checked.skipped is None and settings.tokenizer is not None:
            _prepare(checked, settings, counts, rng)
    except ImageErrors as error:  # the checks above should leave none: a last guard, counted and reported
        message = f"unexpected error: {str(error) or type(error).__name__}"
        checked.fail(SchemaIssue("<sample>", message, "report it with this sample", "bad_sample"))
    return checked


# ----------------------------------------------------------------------------------------------- parsing

_NO_JSON = object()


def _load_json(raw: bytes | None) -> tuple[Any, SchemaIssue | None]:
    if raw is None:
        return _NO_JSON, None
    try:
        return json.loads(raw), None
    except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON, a number of 4300+ digits, deep nesting
        fix = "write valid UTF-8 JSON"
        return _NO_JSON, SchemaIssue("<json>", f"not valid JSON: {str(error)[:200]}", fix, "bad_json")


def _kind_and_json(members: Mapping[str, bytes], settings: SampleSettings) -> tuple[SampleKind, Any, Any]:
    data, problem = _load_json(members.get("json"))
    if settings.kind != "auto":
        return settings.kind, data, problem
    if any(ext in members for ext in IMAGE_EXTENSIONS):
        return "pairs", data, problem
    if isinstance(data, dict) and data.get("format") == SFT_FORMAT:
        return "sft", data, problem
    return "interleaved", data, problem


def _missing_json(key: str, members: Mapping[str, bytes], settings: SampleSettings) -> SchemaIssue:
    if settings.kind == "auto":
        fix = "write <key>.json (document or conversation) or <key>.jpg + <key>.txt (pair)"
        return SchemaIssue(
            "<sample>", f"neither a document nor a pair: {sorted(members)}", fix, "missing_member"
        )
    return SchemaIssue("<json>", f"[{key}] has no .json member", "write <key>.json", "missing_member")


def _marker_problem(texts: list[tuple[str, str]], token: str) -> SchemaIssue | None:
    """The first (field, text) holding the image marker itself: the builder adds one per image."""
    for where, text in texts:
        if token in text:
            fix = f"remove {token!r} from the text: each image's marker is placed where the image goes"
            return SchemaIssue(where, f"holds the image marker {token!r}", fix, "image_marker_mismatch")
    return None


def _has_json(
    checked: Checked,
    members: Mapping[str, bytes],
    data: Any,
    json_problem: SchemaIssue | None,
    settings: SampleSettings,
) -> bool:
    """Whether the sample has a parsed JSON member; if not, the sample fails with the reason why."""
    if json_problem is not None:
        checked.fail(json_problem)
        return False
    if data is _NO_JSON:
        checked.fail(_missing_json(checked.key, members, settings))
        return False
    return True


def _check_document(
    checked: Checked,
    members: Mapping[str, bytes],
    data: Any,
    json_problem: SchemaIssue | None,
    settings: SampleSettings,
    source: str,
) -> None:
    key = checked.key
    if not _has_json(checked, members, data, json_problem, settings):
        return
    mmc4 = is_mmc4_dict(data)
    issues = check_mmc4_dict(data) if mmc4 else check_document_dict(data)
    if issues:
        checked.fail(*issues)
        return
    missing: dict[int, SchemaIssue] = {}
    if mmc4:
        images, bad = decode_base64_images(data)
        document = document_from_mmc4(data, key, images)
        fix = "store the image bytes base64-encoded, or remove the entry"
        for index in bad:
            field_name = f"image_info[{index}].image_base64"
            missing[index] = SchemaIssue(field_name, "missing or invalid", fix, "missing_member")
    else:
        document = InterleavedDocument.from_dict(data, source=source, key=key)
        document.images = [
            EncodedImage(members.get(info.member, b""), info.member.rsplit(".", 1)[1])
            for info in document.image_info
        ]
        fix = "add the image member next to the JSON or remove its image_info entry"
        for index, info in enumerate(document.image_info):
            if info.member not in members:
                message = f"member {key}.{info.member} is not in the tar"
                missing[index] = SchemaIssue(f"image_info[{index}].member", message, fix, "missing_member")
    check_document_images(checked, document, missing, settings)


def check_document_images(
    checked: Checked, document: InterleavedDocument, missing: dict[int, SchemaIssue], settings: SampleSettings
) -> Checked:
    """The checks of a parsed document: no image marker in its text, and its images (``missing``: the
    problems of images that could not be found, by index). Skips the document, or drops the bad images."""
    checked.sample = document
    texts = [(f"text_list[{i}]", sentence) for i, sentence in enumerate(document.text_list)]
    marker = _marker_problem(texts, settings.interleaved.image_token)
    if marker is not None:
        return checked.fail(marker)
    bad = _bad_images(document, missing, settings.verify_images)
    if not bad:
        return checked
    problems = [bad[index] for index in sorted(bad)]
    if not settings.drop_bad_images:
        return checked.fail(*problems)
    checked.problems.extend(problems)
    checked.dropped.extend(problems)
    checked.sample = document.without_images(set(bad))
    return checked


def _bad_images(
    document: InterleavedDocument, missing: dict[int, SchemaIssue], verify: bool
) -> dict[int, SchemaIssue]:
    """Missing, mismatched (stored sha256) and undecodable images by index; fills unknown sizes."""
    bad = dict(missing)
    if not verify:
        return bad
    for index, (info, image) in enumerate(zip(document.image_info, document.images)):
        if index in bad:
            continue
        if info.sha256 and info.sha256 != image.sha256():
            fix = "recompute sha256 from the image's bytes, or attach the right image"
            bad[index] = SchemaIssue(
                f"image_info[{index}].sha256", "does not match the bytes", fix, "sha256_mismatch"
            )
            continue
        try:
            width, height = image.decode().size
        except ImageErrors as error:
            fix = "re-download or re-encode the image, or remove its image_info entry"
            message = f"undecodable image: {str(error) or type(error).__name__}"
            bad[index] = SchemaIssue(f"image_info[{index}]", message, fix, "corrupt_image")
            continue
        if not info.width or not info.height:
            document.image_info[index] = replace(info, width=width, height=height)
    return bad


def _check_pair(
    checked: Checked,
    members: Mapping[str, bytes],
    data: Any,
    json_problem: SchemaIssue | None,
    settings: SampleSettings,
) -> None:
    key = checked.key
    ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
    if ext is None:
        message = f"[{key}] has no image member ({'/'.join(IMAGE_EXTENSIONS)})"
        checked.fail(SchemaIssue("<image>", message, "write <key>.jpg next to <key>.txt", "missing_member"))
        return
    if json_problem is not None:
        checked.fail(json_problem)
        return
    meta = {} if data is _NO_JSON else data  # the JSON is optional: the caption may come from .txt
    if not isinstance(meta, dict):
        checked.fail(not_an_object(meta))
        return
    caption = members["txt"].decode("utf-8", errors="replace") if "txt" in members else meta.get("caption")
    issues = check_pair_dict({**meta, "caption": caption})
    if issues:
        checked.fail(*issues)
        return
    image = EncodedImage(members[ext], ext)
    extra = {k: v for k, v in meta.items() if k not in ("caption", "url", "width", "height")}
    width, height = meta.get("width") or 0, meta.get("height") or 0
    checked.sample = ImageTextPair(key, caption, image, meta.get("url"), width, height, extra)
    marker = _marker_problem([("caption", caption)], settings.interleaved.image_token)
    if marker is not None:
        checked.fail(marker)
        return
    if settings.verify_images:
        try:
            size = image.decode().size
        except ImageErrors as error:
            message = f"undecodable image: {str(error) or type(error).__name__}"
            checked.fail(SchemaIssue(ext, message, "re-download or re-encode it", "corrupt_image"))
            return
        if not width or not height:
            checked.sample = replace(checked.sample, width=size[0], height=size[1])


def _check_conversation(
    checked: Checked,
    members: Mapping[str, bytes],
    data: Any,
    json_problem: SchemaIssue | None,
    settings: SampleSettings,
    source: str,
) -> None:
    if not _has_json(checked, members, data, json_problem, settings):
        return
    messages, issues = check_conversation_dict(data)
    if issues:
        checked.fail(*issues)
        return
    conversation = Conversation(data["id"], messages, list(data.get("images", [])))
    missing = attach_images(conversation, members, Path(source).parent)
    checked.sample = conversation
    texts = [
        (f"messages[{index}].content", part)
        for index, message in enumerate(messages)
        for part in message.parts
        if isinstance(part, str)
    ]
    marker = _marker_problem(texts, settings.interleaved.image_token)
    if marker is not None:
        checked.fail(marker)
        return
    fix = "add the image member (tar) or file (JSONL: relative to the file's folder), or fix its name"
    problems = [
        SchemaIssue(f"images[{i}]", f"image {conversation.image_refs[i]!r} not found", fix, "missing_member")
        for i in missing
    ]
    if settings.verify_images:
        for index, image in enumerate(conversation.images):
            if index in missing:
                continue
            try:
                image.decode()
            except ImageErrors as error:
                message = f"undecodable image: {str(error) or type(error).__name__}"
                problems.append(SchemaIssue(f"images[{index}]", message, "re-encode it", "corrupt_image"))
    checked.fail(*problems)


# ----------------------------------------------------------------------------------------------- training


def _count(counts: Counter[str] | None, reason: str, amount: int = 1) -> None:
    if counts is not None and amount:
        counts[reason] += amount


def _leave_out(checked: Checked, reason: str, counts: Counter[str] | None) -> None:
    checked.left_out = reason
    _count(counts, reason)


def _truncation(checked: Checked, selected: int, kept: int, counts: Counter[str] | None) -> bool:
    """Whether the sample keeps an image after truncation; counts the images it cut."""
    if selected and not kept:
        fix = "raise max_tokens, or shorten the text before its first image"
        message = f"tokenized to max_tokens, the text keeps none of its {selected} <image> marker(s)"
        checked.fail(SchemaIssue("<text>", message, fix, "image_past_truncation"))
        return False
    _count(counts, "image_past_truncation", selected - kept)
    return True


def _prepare(
    checked: Checked,
    settings: SampleSettings,
    counts: Counter[str] | None,
    rng: Callable[[str], RandomSource] | None,
) -> None:
    """Build the training sequence of a sound sample (the loader's preprocessing, in one place)."""
    tokenizer, config = settings.tokenizer, settings.interleaved
    eos = tokenizer.eos_token or ""
    image_id = settings.image_token_id
    image_id = image_id if image_id is not None else _token_id(tokenizer, config.image_token)
    sample = checked.sample
    if isinstance(sample, InterleavedDocument):
        matches = match_images(sample, config, counts)
        if not matches:
            _leave_out(checked, "no_images", counts)
            return
        sentences = [sentence for _, sentence, _ in matches]
        text = build_interleaved_text(sample.text_list, sentences, eos, config.image_token, config.eoc_token)
        images = [sample.images[index].rgb() for index, _, _ in matches]
        tokenized = tokenize_interleaved(text, images, tokenizer, settings.max_tokens, config.image_token)
        if not _truncation(checked, len(images), len(tokenized.images), counts):
            return
        # Decided after the truncation check, so that a sample is unusable whatever the draw; the draw is
        # seeded by the document alone, so its place in the sequence of checks changes no outcome.
        if len(matches) == 1 and rng is not None and rng(sample.id).random() < config.single_image_drop_prob:
            _leave_out(checked, "single_image_dropped", counts)
            return
        ids, mask, kept = tokenized.input_ids, tokenized.attention_mask, tokenized.images
        eoc_id = settings.eoc_token_id
        eoc_id = eoc_id if eoc_id is not None else _token_id(tokenizer, config.eoc_token)
        labels = make_labels(ids[None], mask[None], image_id, eoc_id, mode="interleaved")[0]
    elif isinstance(sample, ImageTextPair):
        tokenized = tokenize_pair(
            sample.caption, sample.image.decode(), tokenizer, settings.max_tokens, config.image_token
        )
        if not _truncation(checked, 1, len(tokenized.images), counts):
            return
        ids, mask, kept = tokenized.input_ids, tokenized.attention_mask, tokenized.images
        eoc_id = settings.eoc_token_id
        eoc_id = eoc_id if eoc_id is not None else _token_id(tokenizer, config.eoc_token)
        labels = make_labels(ids[None], mask[None], image_id, eoc_id, mode="pairs")[0]
    elif isinstance(sample, Conversation):
        rendered = render_conversation(
            sample, settings.template, eos, image_token=config.image_token, eoc_token=config.eoc_token
        )
        if not rendered.image_order:
            _leave_out(checked, "no_images", counts)
            return
        tokenized, answers, order = tokenize_conversation(
            rendered, tokenizer, settings.max_tokens, config.image_token
        )
        if not _truncation(checked, len(rendered.image_order), len(order), counts):
            return
        ids, mask = tokenized.input_ids, tokenized.attention_mask
        labels = make_response_labels(ids[None], mask[None], answers[None], image_id)[0]
        kept = decode_images(sample, order)
    else:
        raise TypeError(f"cannot prepare a {type(sample).__name__} for training")
    if not (labels[1:] != IGNORE_INDEX).any():  # the loss is over shifted labels: position 0 never counts
        _leave_out(checked, "no_supervised_tokens", counts)
        return
    checked.prepared = Prepared(ids, mask, labels, kept)
