"""Inference for people: interleaved text and images in, text out.

>>> pipe = FlamingoPipeline.from_pretrained("path/to/checkpoint")
>>> pipe([demo_image, "Output:a red circle<|endofchunk|>\\n", query_image, "Output:"], max_new_tokens=20)
>>> pipe.caption(query_image, demos=[(demo_image, "a red circle")])

An item of a prompt is a ``str`` (text), a ``PIL.Image.Image``, a ``pathlib.Path`` or a ``str`` naming an
existing image file (when ``allow_paths``, the default), or an ``http(s)://`` URL with no whitespace (only when
URL fetching is allowed; private addresses are refused unless explicitly allowed). A list of such rows is a
batch. The task helpers render the prompt templates of :mod:`flamingo.prompts`: by default those the checkpoint
recorded (``config.prompts``; OpenFlamingo's benchmark prompts for a checkpoint that recorded none), or the
``prompts`` given to the pipeline, or a ``template`` given to one call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from flamingo.errors import UsageError
from flamingo.io.inputs import (
    IMAGE_SUFFIXES,
    ImagePolicy,
    InputError,
    fetch_image_url,
    is_url,
    read_image_file,
)
from flamingo.model.devices import is_split_map, resolve_device, resolve_dtype
from flamingo.model.dispatch import dispatch, input_device
from flamingo.model.flamingo import Flamingo
from flamingo.model.scoring import score_continuations
from flamingo.processing import FlamingoProcessor
from flamingo.processing import postprocess_caption as _postprocess_caption
from flamingo.processing import postprocess_vqa as _postprocess_vqa
from flamingo.prompts import PromptConfig, PromptTemplate

# Greedy decoding unless asked otherwise; the helpers use the benchmark settings (3 beams).
DEFAULT_GENERATION: dict[str, Any] = {"max_new_tokens": 20, "num_beams": 1, "do_sample": False}
_SAMPLING_ONLY = ("temperature", "top_p", "top_k", "min_p", "typical_p")

Item = Any  # str | PIL.Image.Image | pathlib.Path
Row = Sequence[Item] | tuple[str, Sequence[Item]]


@dataclass(frozen=True)
class Completion:
    """One generated continuation and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    images: int


def postprocess_caption(text: str) -> str:
    """A generated caption cut at "Output", double quotes removed (the benchmark's own post-processing)."""
    return _postprocess_caption(text)


def postprocess_vqa(text: str) -> str:
    """A generated short answer cut at "Question"/"Answer"/"Short", then at the first ", " (the benchmark's)."""
    return _postprocess_vqa(text).strip()


def _sanitize_generation(generation: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in; sampling-only settings dropped for greedy/beam decoding (HF warns about them)."""
    merged = {**DEFAULT_GENERATION, **generation}
    if not merged.get("do_sample"):
        for key in _SAMPLING_ONLY:
            merged.pop(key, None)
    return merged


class FlamingoPipeline:
    """A Flamingo model with its processor, input loading and the few-shot task helpers.

    Thread safety: one call at a time per pipeline (the server gives the model to a single worker thread).
    """

    def __init__(
        self,
        model: Flamingo,
        processor: FlamingoProcessor | None = None,
        policy: ImagePolicy | None = None,
        max_prompt_tokens: int | None = None,
        prompts: PromptConfig | None = None,
    ) -> None:
        self.model = model
        self.processor = processor or FlamingoProcessor.from_model(model)
        self.policy = policy or ImagePolicy()
        self.max_prompt_tokens = max_prompt_tokens
        self.prompts = prompts if prompts is not None else model.config.prompts
        """The task helpers' templates: the checkpoint's own unless others were given."""
        self.device_map: dict[str, int | str] | None = None
        """Where each module went when loaded with a split ``device_map`` (None: one device)."""

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        device_map: str | dict[str, int | str] | None = None,
        checkpoint: str | Path | None = None,
        max_memory: dict[int | str, int | str] | None = None,
        offload_folder: str | Path | None = None,
        trust_remote_code: bool = False,
        prompts: PromptConfig | None = None,
        quantization: Any = None,
        **policy: Any,
    ) -> FlamingoPipeline:
        """Load a checkpoint directory, a hub id, or an OpenFlamingo preset name (with ``checkpoint=``).

        A checkpoint loads through :func:`flamingo.model.checkpoint.from_pretrained`: built empty, then each
        weight read straight onto its device in ``dtype`` (``float32``/``bfloat16``/``float16``; default
        float32 on the CPU, the checkpoint's own elsewhere). ``device`` is one device (``"auto"``: CUDA when
        present). ``device_map`` spreads a model too large for one device over several: ``"auto"`` (or
        ``"balanced"``, ``"balanced_low_0"``, ``"sequential"``) plans it with ``accelerate`` within ``max_memory``
        (for example ``{0: "70GiB", 1: "70GiB", "cpu": "200GiB"}``; default: what is free), a dict names the
        device of each module (see :mod:`flamingo.model.dispatch`); modules mapped to ``"disk"`` need
        ``offload_folder``. A single device name (``"cuda:1"``) is the same as ``device=``.

        ``trust_remote_code=True`` lets a model whose LM is defined by its repository's own code (the MPT-1B
        OpenFlamingo presets, for one) run it; without it such a model is refused before that code is imported.

        ``policy`` holds :class:`~flamingo.io.inputs.ImagePolicy` fields (``allow_paths``, ``allow_urls``,
        ``allow_private_urls``, ``max_image_bytes``, ...) and ``max_prompt_tokens``.
        ``prompts`` replaces the templates the checkpoint recorded. ``quantization`` (``"int8"`` / ``"int4"`` or
        a :class:`~flamingo.model.quantize.QuantizationConfig`) loads the frozen backbones in low-bit form (one
        device only, not with a split ``device_map``).
        """
        from flamingo.model.presets import OPENFLAMINGO_PRESETS

        if str(model) in OPENFLAMINGO_PRESETS:
            loaded = _load_preset(
                str(model),
                checkpoint,
                device,
                dtype,
                device_map,
                max_memory,
                offload_folder,
                trust_remote_code,
                quantization,
            )
        else:
            loaded = Flamingo.from_pretrained(
                str(model),
                dtype=dtype,
                device=device,
                device_map=device_map,
                max_memory=max_memory,
                offload_folder=offload_folder,
                trust_remote_code=trust_remote_code,
                quantization=quantization,
            )
        max_prompt_tokens = policy.pop("max_prompt_tokens", None)
        pipe = cls(loaded, policy=ImagePolicy(**policy), max_prompt_tokens=max_prompt_tokens, prompts=prompts)
        pipe.device_map = loaded.device_map
        return pipe

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device the vision encoder runs on (the first device of a split model)."""
        return input_device(self.model)

    # ------------------------------------------------------------------ inputs
    def load_item(self, item: Item, label: str = "image") -> str | Image.Image:
        """Text stays text; paths and URLs become images under :attr:`policy`; PIL images pass through."""
        if isinstance(item, Image.Image):
            return item
        if isinstance(item, Path):
            return read_image_file(item, self.policy, label)
        if not isinstance(item, str):
            raise TypeError(
                f"{label}: prompt items must be str, PIL.Image.Image or pathlib.Path, got {type(item).__name__}"
            )
        if is_url(item):
            return fetch_image_url(item, self.policy, label)
        if item.startswith("file:"):
            raise InputError(f"{label}: file: URLs are never read; pass a pathlib.Path", "bad_url_scheme")
        if self.policy.allow_paths and _looks_like_image_path(item):
            return read_image_file(item, self.policy, label)
        return item

    def load_row(self, row: Row, index: int = 0) -> list[str | Image.Image] | tuple[str, list[Image.Image]]:
        """Every item of one row loaded (see :meth:`load_item`); a ``(prompt, images)`` row keeps its form."""
        if isinstance(row, str):
            return [row]
        if (
            isinstance(row, tuple)
            and len(row) == 2
            and isinstance(row[0], str)
            and not isinstance(row[1], str)
        ):
            images = [self._load_image(x, f"row {index} image {i + 1}") for i, x in enumerate(row[1])]
            return row[0], images
        return [self.load_item(x, f"row {index} item {i + 1}") for i, x in enumerate(row)]

    def _load_image(self, item: Item, label: str) -> Image.Image:
        loaded = self.load_item(Path(item) if isinstance(item, str) and not is_url(item) else item, label)
        if not isinstance(loaded, Image.Image):
            raise InputError(f"{label}: expected an image, got text {loaded!r}")
        return loaded

    def prepare(self, rows: Sequence[Row]) -> dict[str, torch.Tensor | None]:
        """Loaded rows -> the model's tensors on its device, refusing prompts over ``max_prompt_tokens``."""
        loaded = [self.load_row(r, i) for i, r in enumerate(rows)]
        batch = self.processor(loaded)
        length = batch["input_ids"].shape[1]
        if self.max_prompt_tokens is not None and length > self.max_prompt_tokens:
            raise InputError(
                f"the prompt is {length} tokens; the limit is {self.max_prompt_tokens}: use fewer "
                "demonstrations or shorter text",
                "prompt_too_long",
                413,
            )
        return {k: (v.to(self.device) if v is not None else None) for k, v in batch.items()}

    def count_prompt_tokens(self, row: Row) -> int:
        """Tokens the prompt of one row takes (its text with one ``<image>`` token per image); images are
        not loaded or preprocessed."""
        if (
            isinstance(row, tuple)
            and len(row) == 2
            and isinstance(row[0], str)
            and not isinstance(row[1], str)
        ):
            text = row[0]
        else:
            items = [row] if isinstance(row, str) else row
            text = "".join(
                x if isinstance(x, str) and not _is_image_ref(x, self.policy) else self.processor.image_token
                for x in items
            )
        return len(self.processor.tokenizer(text)["input_ids"])

    # ------------------------------------------------------------------ generation
    def generate(self, rows: Sequence[Row], **generation: Any) -> list[Completion]:
        """One batched ``generate`` over ``rows`` (left padded); HF generation kwargs pass through."""
        batch = self.prepare(rows)
        prompt_length = batch["input_ids"].shape[1]
        out = self.model.generate(
            batch["images"],
            batch["input_ids"],
            batch["attention_mask"],
            image_mask=batch["image_mask"],
            **_sanitize_generation(generation),
        )
        sequences = out if isinstance(out, torch.Tensor) else out.sequences
        texts = self.processor.decode(sequences, prompt_length)
        new = self._count_new_tokens(sequences[:, prompt_length:])
        prompt = batch["attention_mask"].sum(1).tolist()
        images = [0] * len(rows) if batch["image_mask"] is None else batch["image_mask"].sum(1).tolist()
        return [Completion(t, int(p), int(n), int(i)) for t, p, n, i in zip(texts, prompt, new, images)]

    def _count_new_tokens(self, generated: torch.Tensor) -> list[int]:
        """Generated tokens per row (b, n) up to and including the stop token; padding after it not counted."""
        tokens = self.model.config.tokens
        counts = []
        for row in generated.tolist():
            stops = [i for i, tok in enumerate(row) if tok in (tokens.eoc_id, tokens.pad_id)]
            if not stops:
                counts.append(len(row))
            else:
                counts.append(stops[0] + (row[stops[0]] == tokens.eoc_id))
        return counts

    def __call__(self, interleaved: Row | Sequence[Row], **generation: Any) -> str | list[str]:
        """Generate for one row (-> str) or a batch of rows (-> list[str])."""
        if _is_batch(interleaved):
            return [c.text for c in self.generate(interleaved, **generation)]
        return self.generate([interleaved], **generation)[0].text

    def stream(self, interleaved: Row, **generation: Any) -> TextStream:
        """Text pieces as they are generated (one row); ``"".join(pieces)`` equals ``self(interleaved)``.

        Beam search cannot stream: with ``num_beams > 1`` the whole text arrives as one piece at the end.
        """
        return TextStream(self, interleaved, generation)

    # ------------------------------------------------------------------ tasks
    def render(self, template: PromptTemplate, demos: Sequence[dict[str, str]], query: dict[str, str]) -> str:
        """The prompt text of ``template`` for these demonstration and query fields, with the model's tokens."""
        return template.render(demos, query, self.processor.image_token, self.processor.eoc_token)

    def caption_prompt(self, demo_captions: Sequence[str], template: PromptTemplate | None = None) -> str:
        """The captioning prompt text for demonstrations with these captions, ending where the caption goes."""
        template = template or self.prompts.caption
        return self.render(template, [{"caption": c} for c in demo_captions], {})

    def vqa_prompt(
        self, demo_pairs: Sequence[tuple[str, str]], question: str, template: PromptTemplate | None = None
    ) -> str:
        """The VQA prompt text for (question, answer) demonstrations and the query question."""
        demos = [{"question": q, "answer": a} for q, a in demo_pairs]
        return self.render(template or self.prompts.vqa, demos, {"question": question})

    def classify_prompt(self, demo_labels: Sequence[str], template: PromptTemplate | None = None) -> str:
        """The classification prompt text for demonstrations with these labels, ending where a label goes."""
        return self.render(template or self.prompts.classify, [{"label": label} for label in demo_labels], {})

    def caption(
        self,
        image: Item,
        demos: Sequence[tuple[Item, str]] = (),
        template: PromptTemplate | None = None,
        **generation: Any,
    ) -> str:
        """A caption of ``image`` after (image, caption) demonstrations, post-processed like the benchmark."""
        row = (self.caption_prompt([c for _, c in demos], template), [im for im, _ in demos] + [image])
        settings = {"num_beams": 3, "max_new_tokens": 20, **generation}
        return postprocess_caption(self.generate([row], **settings)[0].text)

    def vqa(
        self,
        image: Item,
        question: str,
        demos: Sequence[tuple[Item, str, str]] = (),
        template: PromptTemplate | None = None,
        **generation: Any,
    ) -> str:
        """A short answer to ``question`` after (image, question, answer) demonstrations."""
        prompt = self.vqa_prompt([(q, a) for _, q, a in demos], question, template)
        row = (prompt, [d[0] for d in demos] + [image])
        settings = {"num_beams": 3, "max_new_tokens": 5, **generation}
        return postprocess_vqa(self.generate([row], **settings)[0].text)

    def classify(
        self, image: Item, class_names: Sequence[str], demos: Sequence[tuple[Item, str]] = (), **kwargs: Any
    ) -> str:
        """The class name with the highest mean token log-probability after the classification prompt."""
        scores = self.class_scores(image, class_names, demos, **kwargs)
        return max(scores, key=scores.__getitem__)

    def class_scores(
        self,
        image: Item,
        class_names: Sequence[str],
        demos: Sequence[tuple[Item, str]] = (),
        batch_size: int = 64,
        template: PromptTemplate | None = None,
    ) -> dict[str, float]:
        """Mean log-probability of each class name's tokens after :meth:`classify_prompt` (rank
        classification)."""
        if not class_names:
            raise ValueError("class_names is empty: give at least one class name")
        prompt = self.classify_prompt([label for _, label in demos], template)
        row = (prompt, [im for im, _ in demos] + [image])
        scores = self.score_continuations(row, list(class_names), batch_size)
        return dict(zip(class_names, scores))

    @torch.no_grad()
    def score_continuations(
        self, row: Row, continuations: Sequence[str], batch_size: int = 64
    ) -> list[float]:
        """Mean log-probability of each continuation's tokens (tokenized alone) following the prompt ``row``.

        The images are encoded once and the prompt runs once; ``batch_size`` continuations share each further
        forward pass (:func:`flamingo.model.scoring.score_continuations`).
        """
        batch = self.prepare([row])
        media = None
        if batch["images"] is not None:
            media = self.model.encode_media(batch["images"], batch["image_mask"])  # (1, t, l, d)
        tokenizer = self.processor.tokenizer
        ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        empty = [c for c, i in zip(continuations, ids) if not i]
        if empty:
            raise ValueError(f"continuation {empty[0]!r} has no tokens")
        scores = score_continuations(self.model, batch["input_ids"], ids, media, batch_size, reduce="mean")
        return scores.tolist()


class TextStream:
    """Iterate for text pieces; afterwards :attr:`completion` holds the whole text and the token counts.

    Generation runs in a thread feeding a ``TextIteratorStreamer``; an error there is raised here.
    """

    def __init__(self, pipe: FlamingoPipeline, row: Row, generation: dict[str, Any]) -> None:
        self.pipe, self.row, self.generation = pipe, row, generation
        self.completion: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        if self.generation.get("num_beams", 1) > 1:  # HF streamers do not support beam search
            self.completion = self.pipe.generate([self.row], **self.generation)[0]
            if self.completion.text:
                yield self.completion.text
            return
        streamer = TextIteratorStreamer(self.pipe.processor.tokenizer, skip_prompt=True)
        results: list[Any] = []
        thread = threading.Thread(target=self._run, args=(streamer, results), daemon=True)
        thread.start()
        cleaner = _StreamCleaner(self.pipe.processor)
        for raw in streamer:
            if piece := cleaner.feed(raw):
                yield piece
        thread.join()
        if isinstance(results[0], BaseException):
            raise results[0]
        self.completion = results[0]
        if rest := cleaner.finish():
            yield rest

    def _run(self, streamer: Any, results: list[Any]) -> None:
        try:
            results.append(self.pipe.generate([self.row], streamer=streamer, **self.generation)[0])
        except BaseException as err:  # handed to the consumer, which re-raises it
            results.append(err)
            streamer.end()


class _StreamCleaner:
    """Applies ``FlamingoProcessor.decode``'s clean-up (cut at end-of-chunk, specials removed, stripped) to
    text that arrives in pieces, emitting only what can no longer change; trailing spaces wait for more text."""

    def __init__(self, processor: FlamingoProcessor) -> None:
        self.eoc = processor.eoc_token
        self.specials = [s for s in processor.tokenizer.all_special_tokens if s]
        self.raw, self.sent = "", ""

    def _clean(self) -> str:
        text = self.raw.split(self.eoc)[0]
        for special in self.specials:
            text = text.replace(special, "")
        return text.strip()

    def feed(self, raw: str) -> str:
        self.raw += raw
        clean = self._clean()
        if not clean.startswith(self.sent):  # cannot happen for append-only text; keep output consistent
            return ""
        piece, self.sent = clean[len(self.sent) :], clean
        return piece

    def finish(self) -> str:
        return self.feed("")


def _is_batch(value: Any) -> bool:
    """A list of rows (each a list or a (prompt, images) tuple) rather than one row of items."""
    return isinstance(value, list) and bool(value) and all(isinstance(r, (list, tuple)) for r in value)


def _is_image_ref(text: str, policy: ImagePolicy) -> bool:
    """Whether :meth:`FlamingoPipeline.load_item` would load this string as an image."""
    return is_url(text) or (policy.allow_paths and _looks_like_image_path(text))


def _load_preset(
    name: str,
    checkpoint: str | Path | None,
    device: str | torch.device,
    dtype: torch.dtype | str | None,
    device_map: str | dict[str, int | str] | None,
    max_memory: dict[int | str, int | str] | None,
    offload_folder: str | Path | None,
    trust_remote_code: bool,
    quantization: Any = None,
) -> Flamingo:
    """An OpenFlamingo release converted from its ``checkpoint.pt`` (read on the CPU), then placed (and its
    frozen backbones quantized layer by layer onto the device, for ``quantization``)."""
    from flamingo.model.convert import load_openflamingo

    split = is_split_map(device_map)
    if device_map is not None and not split:
        device = device_map  # one device, named the transformers way
    if quantization is not None and split:
        raise UsageError(
            f"quantization={quantization!r} with device_map={device_map!r}: a quantized model runs on one "
            "device (int4 fits the 9B model on one 24 GB GPU); pass device= instead"
        )
    target = None if split else resolve_device(device)
    dtype = resolve_dtype(dtype, target if target is not None else "auto")
    loaded = load_openflamingo(name, checkpoint=checkpoint, dtype=dtype, trust_remote_code=trust_remote_code)
    loaded = loaded.eval()
    if quantization is not None:
        from flamingo.model.quantize import quantize_backbones

        quantize_backbones(loaded, quantization, target)
    if split:
        dispatch(loaded, device_map, max_memory, offload_folder)
        return loaded
    return loaded.to(target)


def _looks_like_image_path(text: str) -> bool:
    """A one-line string ending in an image suffix that names an existing file."""
    if "\n" in text or len(text) > 4096 or Path(text).suffix.lower() not in IMAGE_SUFFIXES:
        return False
    try:
        return Path(text).is_file()
    except OSError:
        return False
