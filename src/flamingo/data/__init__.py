"""Shard schemas, readers and writers, interleaved preprocessing, instruction conversations, label masking and
synthetic data."""

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
from flamingo.data.labels import make_labels, make_response_labels
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
from flamingo.data.sft import (
    ChatTemplate,
    Conversation,
    Message,
    SftShardWriter,
    conversation_from_dict,
    render_conversation,
    tokenize_conversation,
)
from flamingo.data.shards import (
    InterleavedShardWriter,
    PairShardWriter,
    ReadStats,
    read_interleaved,
    read_mmc4_jsonl,
    read_pairs,
)
from flamingo.data.usable import REASONS, SETTINGS_REASONS, Checked, SampleSettings, check_sample
from flamingo.data.validate import ValidationIssue, ValidationReport, shard_stats, validate_shards

__all__ = [
    "FORMAT",
    "REASONS",
    "SETTINGS_REASONS",
    "ChatTemplate",
    "Checked",
    "Conversation",
    "EncodedImage",
    "ImageInfo",
    "ImageTextPair",
    "InterleavedConfig",
    "InterleavedDocument",
    "InterleavedSample",
    "InterleavedShardWriter",
    "Message",
    "PairShardWriter",
    "ReadStats",
    "SampleSettings",
    "SchemaError",
    "SchemaIssue",
    "SftShardWriter",
    "TokenizedSample",
    "ValidationIssue",
    "ValidationReport",
    "build_interleaved_text",
    "build_pair_text",
    "check_sample",
    "conversation_from_dict",
    "expand_braces",
    "expand_paths",
    "hungarian_assignment",
    "make_labels",
    "make_response_labels",
    "preprocess_interleaved",
    "read_interleaved",
    "read_mmc4_jsonl",
    "read_pairs",
    "render_conversation",
    "shard_stats",
    "tokenize_conversation",
    "tokenize_interleaved",
    "tokenize_pair",
    "validate_shards",
]
