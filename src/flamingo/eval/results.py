"""Results files, rescoring and reports.

An evaluation writes two files: ``predictions.jsonl`` (one record per prompt: example id, seed, shots,
demonstration ids, raw and processed output, references) and ``results.json`` (scores per shot count
with mean and std over seeds, every setting, model and data identity, versions, timings). Scores can
be recomputed from ``predictions.jsonl`` alone with ``rescore``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import platform
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import numpy as np

from flamingo.eval.metrics import get_metric
from flamingo.eval.tasks import TaskSpec, load_task

RESULTS_FORMAT_VERSION = 1
PUBLISHED_MODELS = ("Flamingo-9B", "OpenFlamingo-9B", "OpenFlamingo-3B")


@dataclass
class PredictionRecord:
    """One prompt's outcome.

    For generation tasks the outputs are text; for classification ``raw_output`` maps class names to
    scores and ``processed_output`` is the predicted class name, or, for ROC AUC tasks, the
    probability of the positive class.
    """

    example_id: str
    seed: int
    shots: int
    demo_ids: list[str]
    raw_output: Any
    processed_output: Any
    references: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


def write_predictions(path: str | Path, records: Iterable[PredictionRecord | dict[str, Any]]) -> None:
    """Write ``records`` as JSON lines."""
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            row = asdict(record) if dataclasses.is_dataclass(record) else record
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_predictions(path: str | Path) -> list[PredictionRecord]:
    """Read a ``predictions.jsonl`` written by ``write_predictions``."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(PredictionRecord(**json.loads(line)))
                except (json.JSONDecodeError, TypeError) as err:
                    raise ValueError(f"{path}:{line_no}: not a prediction record ({err}).") from err
    return records


def _metric_inputs(records: Sequence[PredictionRecord], task: TaskSpec) -> tuple[list[Any], list[Any]]:
    predictions = [r.processed_output for r in records]
    references: list[Any] = [r.references for r in records]
    if task.metric == "roc_auc":
        predictions = [float(p) for p in predictions]
        references = [int(bool(r) and r[0] == task.positive_class) for r in references]
    return predictions, references


def score_records(records: Sequence[PredictionRecord], task: TaskSpec) -> dict[str, dict[str, Any]]:
    """Scores per shot count: ``{"4": {"mean", "std", "per_seed": {"42": score}, "num_examples": {...}}}``.

    Each (shots, seed) group is scored with the task's metric; mean and (population) std are over seeds.
    """
    groups: dict[tuple[int, int], list[PredictionRecord]] = defaultdict(list)
    for record in records:
        groups[(record.shots, record.seed)].append(record)
    metric = get_metric(task.metric)
    scores: dict[str, dict[str, Any]] = {}
    for shots in sorted({s for s, _ in groups}):
        seeds = sorted(seed for s, seed in groups if s == shots)
        per_seed = {str(seed): float(metric(*_metric_inputs(groups[(shots, seed)], task))) for seed in seeds}
        values = np.array(list(per_seed.values()))
        scores[str(shots)] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "per_seed": per_seed,
            "num_examples": {str(seed): len(groups[(shots, seed)]) for seed in seeds},
        }
    return scores


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_versions() -> dict[str, str]:
    """Versions of Python, torch, transformers and flamingo, and the platform."""
    return {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "flamingo": _version("flamingo-vlm"),
        "platform": platform.platform(),
    }


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the git checkout holding ``path`` (default: this package's source), with ``-dirty`` when
    tracked files were changed; None when it is not a git checkout (an installed wheel) or git is missing."""
    import subprocess

    folder = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        top = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.split()
        if len(top) != 2 or not (Path(top[0]) / "src" / "flamingo").is_dir():
            return None  # a repository, but not flamingo-vlm's (e.g. a site-packages inside someone's repo)
        dirty = subprocess.run(
            ["git", "-C", top[0], "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return top[1] + ("-dirty" if dirty else "")


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_checksums(task: TaskSpec, data_root: str | Path | None) -> dict[str, dict[str, str]]:
    """sha256 of every data file the task's readers read (annotations, questions, class maps), by reader option:
    ``{"test.annotations": {"path": "okvqa/....json", "sha256": "..."}}``. Folders (images) are not hashed."""
    if data_root is None:
        return {}
    out: dict[str, dict[str, str]] = {}
    hashed: dict[Path, str] = {}
    for split, options in (("train", task.train), ("test", task.test)):
        for name, value in sorted((options or {}).items()):
            if not isinstance(value, str) or not value:
                continue
            full = Path(data_root) / value
            if not full.is_file():
                continue
            if full not in hashed:
                hashed[full] = _sha256(full)
            out[f"{split}.{name}"] = {"path": value, "sha256": hashed[full]}
    return out


def _java_version() -> str | None:
    import shutil
    import subprocess

    java = shutil.which("java")
    if java is None:
        return None
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[0] if lines else None


def scoring_provenance(task: TaskSpec) -> dict[str, Any]:
    """What stands behind the task's score besides the predictions: the OK-VQA stemmer, CIDEr's Java and
    pycocoevalcap."""
    out: dict[str, Any] = {}
    if task.postprocess == "okvqa":
        from flamingo.eval.stemming import stemmer_info

        out["stemmer"] = stemmer_info()
    if task.metric == "cider":
        out["cider"] = {"java": _java_version(), "pycocoevalcap": _version("pycocoevalcap")}
    return out


def provenance(task: TaskSpec, data_root: str | Path | None) -> dict[str, Any]:
    """The ``provenance`` block of ``results.json``: code version and commit, scoring tools, data checksums."""
    return {
        "flamingo_version": _version("flamingo-vlm"),
        "git_commit": git_commit(),
        **scoring_provenance(task),
        "data_files": data_checksums(task, data_root),
    }


def task_settings(task: TaskSpec) -> dict[str, Any]:
    """Every setting of ``task`` that affects scores, as JSON."""
    settings = asdict(task)
    settings["source"] = task.source
    return settings


def build_results(
    task: TaskSpec,
    records: Sequence[PredictionRecord],
    model: dict[str, Any],
    data: dict[str, Any],
    settings: dict[str, Any] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The content of ``results.json``.

    ``model`` and ``data`` identify what was evaluated (e.g. checkpoint path and revision, data root);
    ``provenance`` adds the code's version and git commit, the scoring tools (OK-VQA stemmer, CIDEr's Java and
    pycocoevalcap) and the sha256 of the data files read under ``data["data_root"]``; ``settings`` holds run options beyond the task's (demonstration selection,
    ablations, batch size); ``timings`` holds seconds per stage.
    """
    return {
        "format_version": RESULTS_FORMAT_VERSION,
        "task": task.name,
        "metric": task.metric,
        "scores": score_records(records, task),
        "task_settings": task_settings(task),
        "settings": settings or {},
        "model": model,
        "data": data,
        "versions": environment_versions(),
        "provenance": provenance(task, (data or {}).get("data_root")),
        "timings": timings or {},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def write_results(
    out_dir: str | Path, task: TaskSpec, records: Sequence[PredictionRecord], **identity: Any
) -> dict[str, Any]:
    """Write ``predictions.jsonl`` and ``results.json`` into ``out_dir``; return the results dict.

    ``identity`` is passed to ``build_results`` (model, data, settings, timings).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out / "predictions.jsonl", records)
    results = build_results(task, records, **identity)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return results


def rescore(predictions_path: str | Path, task: TaskSpec | str) -> dict[str, Any]:
    """Recompute the scores from ``predictions.jsonl`` alone (e.g. after fixing a metric)."""
    spec = task if isinstance(task, TaskSpec) else load_task(task)
    records = read_predictions(predictions_path)
    return {"task": spec.name, "metric": spec.metric, "scores": score_records(records, spec)}


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------


def load_published() -> dict[str, Any]:
    """Published OpenFlamingo-3B/9B and Flamingo-9B scores (docs/openflamingo-compat.md, "Published numbers")."""
    text = resources.files("flamingo.eval").joinpath("resources/published.json").read_text("utf-8")
    return json.loads(text)


def _fmt(score: dict[str, Any] | None) -> str:
    if score is None:
        return "-"
    return f"{score['mean']:.1f}" + (f" ± {score['std']:.1f}" if len(score["per_seed"]) > 1 else "")


def markdown_report(results: Sequence[dict[str, Any]], label: str = "this model") -> str:
    """A Markdown table per task: our mean ± std per shot count, beside the published numbers."""
    published = load_published()
    lines = []
    for res in results:
        pub = published["tasks"].get(res["task"], {})
        shots = sorted({int(s) for s in res["scores"]} | (set(published["shots"]) if pub else set()))
        lines += [f"### {res['task']} ({res['metric']})", ""]
        lines.append("| model | " + " | ".join(f"{s}-shot" for s in shots) + " |")
        lines.append("|---|" + "---|" * len(shots))
        stemmer = res.get("provenance", {}).get("stemmer")
        approximate = stemmer is not None and not stemmer.get("exact")
        row_label = f"{label} (approximate stemmer)" if approximate else label
        lines.append(f"| {row_label} | " + " | ".join(_fmt(res["scores"].get(str(s))) for s in shots) + " |")
        for name in PUBLISHED_MODELS if pub else ():
            by_shot = dict(zip(published["shots"], pub[name]))
            lines.append(f"| {name} | " + " | ".join(str(by_shot.get(s, "-")) for s in shots) + " |")
        if approximate:
            lines += [
                "",
                "Predictions were stemmed with the data-free rules, an approximation of OpenFlamingo's NLTK "
                f"stemming ({stemmer.get('reason')}); scores can differ slightly from published ones.",
            ]
        lines.append("")
    return "\n".join(lines)


def _grid(count: int) -> tuple[int, int]:
    """(rows, columns) for ``count`` panels: one row up to 3, then two rows (2 x 2 for 4, up to 2 x 4 for 8),
    then rows of 4."""
    if count <= 3:
        return 1, max(count, 1)
    columns = 2 if count == 4 else min(4, -(-count // 2))
    return -(-count // columns), columns


def report_figure(results: Sequence[dict[str, Any]], label: str = "this model") -> Any:
    """The report's matplotlib figure: a grid of panels (score vs shots per task, ours with std error bars,
    published dashed) with a single legend for the whole figure, below the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    published = load_published()
    rows, columns = _grid(len(results))
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows + 0.6), squeeze=False)
    flat = list(axes.flat)
    entries: dict[str, Any] = {}
    for ax, res in zip(flat, results):
        shots = sorted(int(s) for s in res["scores"])
        means = [res["scores"][str(s)]["mean"] for s in shots]
        stds = [res["scores"][str(s)]["std"] for s in shots]
        entries.setdefault(label, ax.errorbar(shots, means, yerr=stds, marker="o", capsize=3, color="C0"))
        pub = published["tasks"].get(res["task"])
        for index, name in enumerate(PUBLISHED_MODELS if pub else ()):
            (line,) = ax.plot(
                published["shots"], pub[name], linestyle="--", marker=".", color=f"C{index + 1}"
            )
            entries.setdefault(name, line)
        ax.set_title(res["task"], fontsize=10)
        ax.set_xlabel("shots", fontsize=8)
        ax.set_ylabel(res["metric"], fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in flat[len(results) :]:
        ax.set_visible(False)
    # One legend for the figure (same colour per model in every panel), in a strip below the grid.
    fig.legend(list(entries.values()), list(entries), loc="lower center", ncol=len(entries), fontsize=8)
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))
    return fig


def plot_report(results: Sequence[dict[str, Any]], path: str | Path, label: str = "this model") -> Path:
    """Write :func:`report_figure` as a PNG."""
    import matplotlib.pyplot as plt

    fig = report_figure(results, label)
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(
    results: Sequence[dict[str, Any]], out_dir: str | Path, label: str = "this model"
) -> dict[str, Path]:
    """Write ``report.md`` and ``scores_vs_shots.png`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = out / "report.md"
    markdown.write_text(markdown_report(results, label), "utf-8")
    png = plot_report(results, out / "scores_vs_shots.png", label)
    return {"markdown": markdown, "png": png}
