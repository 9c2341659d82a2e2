"""The interleaved dataset builder (the MMC4 recipe) as pure stage functions plus two engines.

Stages (each ``docs -> docs``, runnable in a worker process or a Ray task unchanged):
``read_input`` -> ``fetch_documents`` -> ``filter_images`` / ``hash_images`` -> ``decontaminate`` ->
``dedup_documents`` (corpus-wide) -> ``filter_faces`` -> ``filter_nsfw`` -> ``interleave_documents`` ->
``to_shard_record`` / ``write_shard``. ``run_pipeline`` runs them all, locally or on Ray Data.
"""

from flamingo.build.config import BuildConfig, FetchConfig, FilterConfig, InterleaveConfig, ReadConfig
from flamingo.build.dedup import DedupIndex, PHashIndex, build_eval_index, decontaminate, dedup_documents
from flamingo.build.document import ImageRef, WebDocument
from flamingo.build.engine import BuildResult, Embedder, run_pipeline
from flamingo.build.faces import FaceDetector, filter_faces, make_face_detector
from flamingo.build.fetch import FetchError, fetch_documents
from flamingo.build.filters import filter_images, hash_images
from flamingo.build.interleave import assign, cosine_similarity, interleave_documents
from flamingo.build.nsfw import NSFWScorer, PromptNSFWScorer, SafetyHeadScorer, filter_nsfw
from flamingo.build.read import extract_html, read_html_file, read_input, read_jsonl, read_warc
from flamingo.build.sentences import split_sentences
from flamingo.build.stats import BuildStats
from flamingo.build.write import to_json_dict, to_shard_record, write_shard

__all__ = [
    "BuildConfig",
    "BuildResult",
    "BuildStats",
    "DedupIndex",
    "Embedder",
    "FaceDetector",
    "FetchConfig",
    "FetchError",
    "FilterConfig",
    "ImageRef",
    "InterleaveConfig",
    "NSFWScorer",
    "PHashIndex",
    "PromptNSFWScorer",
    "ReadConfig",
    "SafetyHeadScorer",
    "WebDocument",
    "assign",
    "build_eval_index",
    "cosine_similarity",
    "decontaminate",
    "dedup_documents",
    "extract_html",
    "fetch_documents",
    "filter_faces",
    "filter_images",
    "filter_nsfw",
    "hash_images",
    "interleave_documents",
    "make_face_detector",
    "read_html_file",
    "read_input",
    "read_jsonl",
    "read_warc",
    "run_pipeline",
    "split_sentences",
    "to_json_dict",
    "to_shard_record",
    "write_shard",
]
