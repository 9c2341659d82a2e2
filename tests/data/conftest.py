"""Shared fixtures of the data tests: a tiny offline tokenizer, a raw tar writer for hostile input, and the
trainer's loader counting one epoch of a shard."""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from data_support import loader_source, no_pixels
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from flamingo.data.loader import SourceDataset
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


EpochCounts = Callable[..., tuple[dict[str, int], dict[str, int]]]


@pytest.fixture
def epoch_counts(tiny_tokenizer) -> EpochCounts:
    """What the trainer's loader counts over one epoch of one shard whose FIRST sample is usable (see
    :func:`loader_source`): ``(read skips per reason, samples and images the settings leave out)``."""

    def run(kind: str, path: Path, **fields: object) -> tuple[dict[str, int], dict[str, int]]:
        source = loader_source(kind, path, **fields)
        tokens = tiny_tokenizer.convert_tokens_to_ids(["<image>", "<|endofchunk|>"])
        dataset = SourceDataset(source, tiny_tokenizer, no_pixels, tokens[0], tokens[1])
        first = None
        for _, state in dataset:
            counts = Counter(state["read_stats"]["skipped"]), Counter(state["skipped"])
            first = first or counts  # what the first sample counted (it comes again in the second epoch)
            # The first sample of the second epoch: every sample of the first one has been counted, and the
            # first sample twice.
            if state["position"]["epoch"] == 1:
                return dict(counts[0] - first[0]), dict(counts[1] - first[1])
        raise AssertionError("unreachable: the loader is endless")

    return run
