"""A tiny random CLIP that logs, to a file shared by all processes, each model construction and each call."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import flamingo.corpus.clip as clip_module
from flamingo.corpus.clip import TINY_CLIP_CONFIG, ClipEmbedder, ClipSpec


class CountingClip(ClipEmbedder):
    """``tiny_clip_embedder``, writing ``load <pid>`` when this process builds the model, ``embed <pid>`` per call."""

    def __init__(self, log: Path, **kwargs: Any) -> None:
        import json

        spec = ClipSpec("open_clip", "flamingo-tiny-clip", None, json.dumps(TINY_CLIP_CONFIG, sort_keys=True))
        super().__init__(spec, device="cpu", **kwargs)
        self.log = str(log)

    def _write(self, what: str) -> None:
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(f"{what} {os.getpid()}\n")

    @property
    def towers(self) -> Any:
        if (self.spec.cache_key, "cpu") not in clip_module._LOADED:
            self._write("load")
        return super().towers

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        self._write("embed")
        return super().embed_images(images)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self._write("embed")
        return super().embed_texts(texts)
