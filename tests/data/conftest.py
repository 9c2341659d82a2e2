"""Shared fixtures of the data tests: a tiny offline tokenizer and a raw tar writer for hostile input."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from flamingo.data.synthetic import COLOURS, FILLER_SENTENCES, SHAPES

TinyTarWriter = Callable[[Path, Sequence[tuple[str, bytes]]], Path]


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on the synthetic vocabulary, with the Flamingo special tokens."""
    corpus = [f"A {c} {s} is shown here. a {c} {s} on a dark background" for c in COLOURS for s in SHAPES]
    corpus += [*FILLER_SENTENCES, "one two three four five six seven eight nine ten"]
    backend = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[UNK]", "<PAD>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="<PAD>", eos_token="</s>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|endofchunk|>", "<image>"]})
    return tokenizer


def _write_tar(path: Path, members: Sequence[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def write_tar() -> TinyTarWriter:
    """Write a tar with exactly the given (name, bytes) members, in order."""
    return _write_tar
