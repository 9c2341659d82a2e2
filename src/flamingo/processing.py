"""The processor: interleaved text and images -> the tensors ``Flamingo`` takes, and generated ids -> text.

Also the benchmark's clean-up of generated text (``postprocess_caption``, ``postprocess_vqa``), shared by the
inference pipeline and the evaluation, which both sit above this module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from flamingo.model.config import TokenConfig
from flamingo.prompts import check_prompt

Row = Sequence["str | Image.Image"] | tuple[str, Sequence[Image.Image]]


class FlamingoProcessor:
    """Turns rows of interleaved text and images into a padded batch.

    A row is either a list mixing strings and PIL images (each image becomes an ``<image>`` token at its
    place) or a ``(prompt, images)`` pair whose prompt already holds one ``<image>`` marker per image.
    """

    def __init__(
        self,
        tokenizer: Any,
        image_transform: Callable[[Sequence[Image.Image]], torch.Tensor],
        image_token: str = TokenConfig.image_token,
        eoc_token: str = TokenConfig.eoc_token,
        padding_side: str = "left",
    ) -> None:
        self.tokenizer = tokenizer
        self.image_transform = image_transform
        self.image_token = image_token
        self.eoc_token = eoc_token
        self.padding_side = padding_side

    @classmethod
    def from_model(cls, model: Any, padding_side: str = "left") -> FlamingoProcessor:
        tokens = model.config.tokens
        return cls(
            model.tokenizer, model.vision.preprocess, tokens.image_token, tokens.eoc_token, padding_side
        )

    def _split_row(self, row: Row, index: int) -> tuple[str, list[Image.Image]]:
        if isinstance(row, tuple) and len(row) == 2 and isinstance(row[0], str):
            text, images = row[0], list(row[1])
        else:
            parts, images = [], []
            for item in row:
                if isinstance(item, Image.Image):
                    parts.append(self.image_token)
                    images.append(item)
                elif isinstance(item, str):
                    parts.append(item)
                else:
                    raise TypeError(
                        f"row {index}: items must be str or PIL.Image.Image, got {type(item).__name__}"
                    )
            text = "".join(parts)
        check_prompt(text, len(images), self.image_token, f"row {index}")
        return text, images

    def __call__(
        self, rows: Sequence[Row], padding_side: str | None = None, max_length: int | None = None
    ) -> dict[str, torch.Tensor | None]:
        """Returns ``input_ids`` (b, s), ``attention_mask`` (b, s), ``images`` (b, t, 1, c, h, w) or None,
        ``image_mask`` (b, t) bool or None; t is the largest image count of any row."""
        texts, row_images = zip(*(self._split_row(r, i) for i, r in enumerate(rows)), strict=True)
        enc = self.tokenizer(
            list(texts), padding=True, padding_side=padding_side or self.padding_side, return_tensors="pt"
        )
        if max_length is not None and enc["input_ids"].shape[1] > max_length:
            raise ValueError(
                f"prompt of {enc['input_ids'].shape[1]} tokens exceeds max_length={max_length}: use fewer "
                "demonstrations or shorter text"
            )
        images, image_mask = self.batch_images(row_images)
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "images": images,
            "image_mask": image_mask,
        }

    def batch_images(
        self, row_images: Sequence[Sequence[Image.Image]]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Preprocess every image once and pack rows front-aligned: (b, t, 1, c, h, w) plus a (b, t) mask."""
        slots = max((len(r) for r in row_images), default=0)
        if slots == 0:
            return None, None
        flat = [im for r in row_images for im in r]
        pixels = self.image_transform(flat)  # (N, c, h, w)
        images = pixels.new_zeros(len(row_images), slots, 1, *pixels.shape[1:])
        mask = torch.zeros(len(row_images), slots, dtype=torch.bool)
        start = 0
        for i, r in enumerate(row_images):
            images[i, : len(r), 0] = pixels[start : start + len(r)]
            mask[i, : len(r)] = True
            start += len(r)
        return images, mask

    def decode(self, sequences: torch.Tensor, prompt_length: int) -> list[str]:
        """The generated continuations as text: prompt removed, cut at the first end-of-chunk token."""
        texts = self.tokenizer.batch_decode(sequences[:, prompt_length:], skip_special_tokens=False)
        cut = [t.split(self.eoc_token)[0] for t in texts]
        specials = [s for s in self.tokenizer.all_special_tokens if s]
        for special in specials:
            cut = [t.replace(special, "") for t in cut]
        return [t.strip() for t in cut]


# Generated text -> answers, as OpenFlamingo's evaluation cleans it: a caption is cut at "Output" and its double
# quotes removed; a VQA answer is cut at "Question", "Answer" or "Short", then at the first ", ". All first cut
# at the stop token, in case the generator leaves it in.
END_OF_CHUNK = TokenConfig.eoc_token
_VQA_CUT = re.compile("Question|Answer|Short")
_VQA_CUT_UNCASED = re.compile("question|answer|short", re.IGNORECASE)


def before_stop(text: str) -> str:
    """``text`` up to the first ``<|endofchunk|>``."""
    return text.split(END_OF_CHUNK, 1)[0]


def postprocess_caption(text: str) -> str:
    """A generated caption: cut at "Output", remove double quotes, strip."""
    return before_stop(text).split("Output", 1)[0].replace('"', "").strip()


def postprocess_vqa(text: str) -> str:
    """A generated short answer: cut at "Question"/"Answer"/"Short", then at the first ", "."""
    answer = _VQA_CUT.split(before_stop(text), maxsplit=1)[0]
    return answer.split(", ", 1)[0]


def postprocess_vqa_uncased(text: str) -> str:
    """:func:`postprocess_vqa` with case-insensitive cuts, for tokenizers that lower-case everything."""
    answer = _VQA_CUT_UNCASED.split(before_stop(text), maxsplit=1)[0]
    return answer.split(", ", 1)[0]
