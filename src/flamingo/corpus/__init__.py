"""The interleaved dataset builder (the MMC4 recipe) as pure stage functions plus two engines.

Stages (each ``docs -> docs``, runnable in a worker process or a Ray task unchanged):
``read_input`` -> ``fetch_documents`` -> ``filter_images`` / ``hash_images`` -> ``decontaminate`` ->
``dedup_documents`` (corpus-wide) -> ``filter_faces`` -> ``filter_nsfw`` -> ``interleave_documents`` ->
``to_shard_record`` / ``write_shard``. ``run_pipeline`` runs them all, locally or on Ray Data.
"""

from flamingo._lazy import lazy_attributes

# name -> defining submodule, imported on first use (so that `import flamingo.X.cli` stays light)
__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "config": ["BuildConfig", "FetchConfig", "FilterConfig", "InterleaveConfig", "ReadConfig"],
        "dedup": ["DedupIndex", "PHashIndex", "build_eval_index", "decontaminate", "dedup_documents"],
        "document": ["ImageRef", "WebDocument"],
        "engine": ["BuildResult", "Embedder", "run_pipeline"],
        "faces": ["FaceDetector", "filter_faces", "make_face_detector"],
        "fetch": ["FetchError", "fetch_documents"],
        "filters": ["filter_images", "hash_images"],
        "interleave": ["assign", "cosine_similarity", "interleave_documents"],
        "nsfw": ["NSFWScorer", "PromptNSFWScorer", "SafetyHeadScorer", "filter_nsfw"],
        "read": ["extract_html", "read_html_file", "read_input", "read_jsonl", "read_warc"],
        "sentences": ["split_sentences"],
        "stats": ["BuildStats"],
        "write": ["to_json_dict", "to_shard_record", "write_shard"],
    },
)

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
