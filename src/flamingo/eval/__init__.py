"""Few-shot in-context evaluation: tasks, dataset readers, demonstration selection, metrics, results.

The model-independent half of the benchmark lives here:

- ``flamingo.eval.tasks``: the task registry (one YAML per task) and ``load_task``.
- ``flamingo.eval.datasets``: readers for the official benchmark files -> ``EvalExample``.
- ``flamingo.eval.demos``: random / 0-shot / RICES demonstrations and prompt building.
- ``flamingo.eval.metrics`` and ``flamingo.eval.postprocess``: scoring and output clean-up, by name.
- ``flamingo.eval.results``: ``results.json``, ``predictions.jsonl``, ``rescore`` and reports.
"""

from flamingo._lazy import lazy_attributes

# name -> defining submodule, imported on first use (so that `import flamingo.X.cli` stays light)
__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "datasets": ["READERS", "EvalExample", "get_reader", "register_reader"],
        "demos": [
            "Prompt",
            "Rices",
            "build_prompt",
            "build_query_set",
            "cached_embeddings",
            "ensemble_prompts",
            "sample_random_demos",
            "select_demos",
        ],
        "metrics": [
            "METRICS",
            "cider",
            "get_metric",
            "register_metric",
            "roc_auc",
            "top1_accuracy",
            "vqa_accuracy",
        ],
        "postprocess": ["POSTPROCESSORS", "get_postprocessor", "register_postprocessor"],
        "results": ["PredictionRecord", "report", "rescore", "write_results"],
        "stemming": ["okvqa_stem"],
        "tasks": ["TaskSpec", "TaskSpecError", "list_tasks", "load_task"],
    },
)

__all__ = [
    "METRICS",
    "POSTPROCESSORS",
    "READERS",
    "EvalExample",
    "PredictionRecord",
    "Prompt",
    "Rices",
    "TaskSpec",
    "TaskSpecError",
    "build_prompt",
    "build_query_set",
    "cached_embeddings",
    "cider",
    "ensemble_prompts",
    "get_metric",
    "get_postprocessor",
    "get_reader",
    "list_tasks",
    "load_task",
    "okvqa_stem",
    "register_metric",
    "register_postprocessor",
    "register_reader",
    "report",
    "rescore",
    "roc_auc",
    "sample_random_demos",
    "select_demos",
    "top1_accuracy",
    "vqa_accuracy",
    "write_results",
]
