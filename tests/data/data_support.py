"""Helpers of the data tests (a uniquely named module: test folders each have a conftest)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from flamingo.data import cli as data_cli
from flamingo.data.loader import SourceConfig


def no_pixels(images: Sequence[object]) -> torch.Tensor:
    """An image transform for tests that do not look at pixels: (t, 3, 2, 2) zeros."""
    return torch.zeros(len(images), 3, 2, 2)


def loader_source(kind: str, path: Path, **fields: object) -> SourceConfig:
    """A source that reads ``path`` in file order, with every image above the selection thresholds."""
    defaults = {
        "max_tokens": 24,
        "min_image_bytes": 0,
        "sim_threshold": 0.0,
        "single_image_drop_prob": 0.0,
        "shuffle_block": 1,
        "batch_size": 1,
    }
    return SourceConfig(name=kind, kind=kind, shards=[str(path)], **{**defaults, **fields})


def flamingo_data(*argv: str) -> int:
    """``flamingo data ARGV...`` in this process: the data subcommands' own parser and functions (the full
    ``flamingo`` parser would import every other subcommand's package first)."""
    parser = argparse.ArgumentParser(prog="flamingo")
    data_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", *argv])
    return args.func(args)
