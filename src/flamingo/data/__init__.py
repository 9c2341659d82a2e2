"""Shard schemas, readers and writers, interleaved preprocessing, label masking and synthetic data."""

from flamingo.data.interleaved import (
    InterleavedConfig,
    InterleavedSample,
    TokenizedSample,
    build_interleaved_text,
    build_pair_text,
    hungarian_assignment,
    preprocess_interleaved,
    tokenize_interleaved,
    tokenize_pair,
)
from flamingo.data.labels import make_labels
from flamingo.data.paths import expand_braces, expand_paths
from flamingo.data.schema import (
    FORMAT,
    EncodedImage,
    ImageInfo,
    ImageTextPair,
    InterleavedDocument,
    SchemaError,
    SchemaIssue,
)
from flamingo.data.shards import (
    InterleavedShardWriter,
    PairShardWriter,
    ReadStats,
    read_interleaved,
    read_mmc4_jsonl,
    read_pairs,
)
from flamingo.data.validate import ValidationIssue, ValidationReport, shard_stats, validate_shards

__all__ = [
    "FORMAT",
    "EncodedImage",
    "ImageInfo",
    "ImageTextPair",
    "InterleavedConfig",
    "InterleavedDocument",
    "InterleavedSample",
    "InterleavedShardWriter",
    "PairShardWriter",
    "ReadStats",
    "SchemaError",
    "SchemaIssue",
    "TokenizedSample",
    "ValidationIssue",
    "ValidationReport",
    "build_interleaved_text",
    "build_pair_text",
    "expand_braces",
    "expand_paths",
    "hungarian_assignment",
    "make_labels",
    "preprocess_interleaved",
    "read_interleaved",
    "read_mmc4_jsonl",
    "read_pairs",
    "shard_stats",
    "tokenize_interleaved",
    "tokenize_pair",
    "validate_shards",
]
