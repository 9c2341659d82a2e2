"""The quickstart report: ``report.md`` and ``report.html`` with loss curves, score-vs-shots plots, example
predictions with their pictures, stage timings, artifact locations, backbone metrics, seeds and spread."""

from __future__ import annotations

import base64
import html
import io
import re
import statistics
from pathlib import Path
from typing import Any

CONDITIONS = ("0-shot", "4-shot", "8-shot", "4-shot blanked", "4-shot text-only", "4-shot held-out combos")


def shot_scores(results: dict[str, Any]) -> dict[str, float]:
    """``{shots: mean score over seeds}`` from one task's ``results.json`` content."""
    scores = {}
    for key, entry in (results.get("scores") or {}).items():
        value = entry.get("mean") if isinstance(entry, dict) else entry
        if isinstance(value, int | float):
            scores[str(key)] = float(value)
    return scores


def vqa_by_kind(predictions: Path, annotations: Path, top_errors: int = 3) -> dict[str, Any]:
    """VQA accuracy (OpenFlamingo's variant, 0-100) per question kind and shot count, all seeds pooled.

    ``predictions``: the evaluator's ``predictions.jsonl``; ``annotations``: the VQA annotation JSON whose
    ``question_type`` names the kind. Returns ``{"scores": {kind: {shots: accuracy}}, "counts": {kind: {shots:
    prompts}}, "errors": {kind: [(raw output, right answer, times), ...]}}`` (the most frequent wrong outputs at
    any shot count, so that a run-on such as ``three are the`` shows as what it is).
    """
    import json
    from collections import Counter, defaultdict

    from flamingo.eval.metrics import vqa_question_accuracy
    from flamingo.eval.results import read_predictions

    items = json.loads(Path(annotations).read_text())["annotations"]
    kinds = {str(a["question_id"]): a.get("question_type", "all") for a in items}
    totals: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    errors: dict[str, Counter] = defaultdict(Counter)
    for record in read_predictions(predictions):
        kind = kinds.get(str(record.example_id), "unknown")
        score = vqa_question_accuracy(str(record.processed_output), record.references, "openflamingo")
        totals[kind][str(record.shots)].append(score)
        if score < 1.0:
            errors[kind][(str(record.raw_output).strip(), record.references[0])] += 1
    ordered = sorted(totals)
    return {
        "scores": {k: {s: 100.0 * statistics.fmean(v) for s, v in _by_shots(totals[k])} for k in ordered},
        "counts": {k: {s: len(v) for s, v in _by_shots(totals[k])} for k in ordered},
        "errors": {k: [(*key, n) for key, n in errors[k].most_common(top_errors)] for k in ordered},
    }


def caption_outputs(predictions: Path, top_errors: int = 3) -> dict[str, Any]:
    """What the captions were, per shot count, all seeds pooled: the share equal to a reference caption, and the
    most frequent outputs equal to none.

    ``predictions``: the evaluator's ``predictions.jsonl`` for the captioning task. Returns ``{"exact": {shots:
    share}, "counts": {shots: prompts}, "errors": {shots: [(output, times), ...]}}``. CIDEr says how far the
    captions are from the references; this says what they were instead (a quiz question where a caption was
    asked for, a caption that runs on into page text).
    """
    from collections import Counter, defaultdict

    from flamingo.eval.results import read_predictions

    exact: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, Counter] = defaultdict(Counter)
    for record in read_predictions(predictions):
        output = str(record.processed_output).strip()
        right = output in {str(r).strip() for r in record.references}
        exact[str(record.shots)].append(1.0 if right else 0.0)
        if not right:
            errors[str(record.shots)][output] += 1
    ordered = _by_shots(exact)
    return {
        "exact": {s: statistics.fmean(v) for s, v in ordered},
        "counts": {s: len(v) for s, v in ordered},
        "errors": {s: errors[s].most_common(top_errors) for s, _ in ordered},
    }


def _by_shots(values: dict[str, list[float]]) -> list[tuple[str, list[float]]]:
    return sorted(values.items(), key=lambda item: int(item[0]))


def episode_table(episodes: dict[Any, dict[str, Any]]) -> list[tuple[str, list[float]]]:
    """(condition, open accuracy per seed) for every condition, in :data:`CONDITIONS` order."""
    rows = []
    for condition in CONDITIONS:
        values = [e[condition]["open_accuracy"] for e in episodes.values() if condition in e]
        if values:
            rows.append((condition, values))
    return rows


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f}"


def _plots(out: Path, summary: dict[str, Any]) -> dict[str, Path]:
    """Loss curves (CLIP, LM, Flamingo) and score-vs-shots plots as PNG files under ``out/plots``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    curves = [
        ("tiny CLIP (contrastive)", summary["clip"]["losses"]),
        ("smeared-key LM (text)", summary["lm"]["losses"]),
        ("Flamingo adapters (trainer)", [m["loss"] for m in summary["train"]["metrics"]]),
    ]
    for ax, (title, values) in zip(axes, curves):
        ax.plot(values, lw=0.8)
        ax.set_title(title)
        ax.set_xlabel("logged step")
        ax.set_ylabel("loss")
    fig.tight_layout()
    paths["losses"] = folder / "losses.png"
    fig.savefig(paths["losses"], dpi=90)
    plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    episodes = summary["eval"]["episodes"]
    for seed, result in episodes.items():
        axes[0].plot(
            [0, 4, 8],
            [result[f"{k}-shot"]["open_accuracy"] for k in (0, 4, 8)],
            marker="o",
            label=f"seed {seed}",
        )
    for condition, marker in (("4-shot blanked", "x"), ("4-shot text-only", "+")):
        values = [r[condition]["open_accuracy"] for r in episodes.values() if condition in r]
        if values:
            axes[0].scatter(
                [4] * len(values), values, marker=marker, color="black", zorder=3, label=condition
            )
    axes[0].set_title("novel labels: open accuracy")
    axes[0].set_ylim(0, 1.02)
    axes[0].legend(loc="center right", fontsize=8)
    for ax, (task, data) in zip(axes[1:], summary["eval"]["generic"].items()):
        scores = shot_scores(data)
        ax.plot([int(k) for k in scores], list(scores.values()), marker="o", label="mean")
        seeds = [
            (int(k), v) for k, row in data.get("scores", {}).items() for v in row.get("per_seed", {}).values()
        ]
        if seeds:
            ax.scatter(*zip(*seeds), s=12, color="grey", zorder=3, label="each seed")
        none = shot_scores(summary["eval"].get("generic_no_demos", {}).get(task, {})).get("0")
        if none is not None:
            ax.scatter([0], [none], marker="x", color="black", zorder=3, label="0 shots, no demonstrations")
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title(f"{task}: {data.get('metric', '')}")
        ax.set_ylim(0, max(ax.get_ylim()[1], 1e-6) * 1.05)
    for ax in axes:
        ax.set_xlabel("shots")
        ax.set_xticks([0, 4, 8])
    fig.tight_layout()
    paths["shots"] = folder / "shots.png"
    fig.savefig(paths["shots"], dpi=90)
    plt.close(fig)
    return paths


def _examples_html(summary: dict[str, Any]) -> str:
    """Four 4-shot episodes of the first seed: demonstrations, query, answer and prediction."""
    first = next(iter(summary["eval"]["episodes"].values()))
    examples = first.get("4-shot examples", {})
    rows = []
    for episode, predicted in zip(examples.get("episodes", []), examples.get("predictions", [])):
        demos = "".join(
            f"<td>{_img(im)}<br>{html.escape(n)}</td>"
            for im, n in zip(episode.demo_images, episode.demo_names)
        )
        mark = "✔" if predicted == episode.answer else "✘"
        rows.append(
            f"<tr>{demos}<td>{_img(episode.query_image)}<br>query</td>"
            f"<td>answer <b>{html.escape(episode.answer)}</b><br>predicted <b>{html.escape(predicted)}</b> {mark}</td></tr>"
        )
    return "<table>" + "".join(rows) + "</table>"


def _img(image: Any) -> str:
    buffer = io.BytesIO()
    image.resize((64, 64)).save(buffer, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


ABLATIONS = {"0-shot": "no demonstrations", "4-shot blanked": "blanked", "4-shot text-only": "text-only"}
"""The conditions that 4-shot in-context learning must beat, and what the conclusion calls them."""

MEANINGS = (
    "**open accuracy**: the share of episodes whose next token after the query picture is exactly the right "
    "name, chosen from the whole vocabulary (not among the episode's names);",
    "**blanked**: the same 4-shot episodes with each demonstration's picture replaced by a grey one: the names "
    "are there, but nothing ties them to a shape;",
    "**text-only**: the same episodes with the demonstrations' pictures removed (only their names);",
    "**held-out**: 4-shot episodes whose shapes are the 8 shape-colour combinations never drawn in training.",
)


def conclusion(episodes: dict[Any, dict[str, Any]]) -> str:
    """One sentence: whether 4-shot novel-label open accuracy (mean over seeds) beats every ablation in
    :data:`ABLATIONS`, with the numbers. ``episodes``: ``{seed: {condition: {"open_accuracy": float}}}``."""

    def mean(condition: str) -> float | None:
        values = [e[condition]["open_accuracy"] for e in episodes.values() if condition in e]
        return statistics.fmean(values) if values else None

    four = mean("4-shot")
    if four is None:
        return "No 4-shot novel-label episodes ran, so there is no conclusion about in-context learning."
    others = {label: value for c, label in ABLATIONS.items() if (value := mean(c)) is not None}
    against = ", ".join(f"{value:.3f} with {label}" for label, value in others.items())
    seeds = f"mean of {len(episodes)} seed{'s' if len(episodes) != 1 else ''}"
    if all(four > value for value in others.values()):
        return (
            f"The model learned in context: given 4 demonstrations it names held-out pets with open accuracy "
            f"{four:.3f} ({seeds}), against {against}."
        )
    beaten_by = [label for label, value in others.items() if value >= four]
    return (
        f"The model did not learn in context: with 4 demonstrations its open accuracy is {four:.3f} ({seeds}), "
        f"no better than with {' or '.join(beaten_by)} ({against})."
    )


def _markdown(summary: dict[str, Any], plots: dict[str, Path]) -> str:
    lines = ["# flamingo quickstart report", "", conclusion(summary["eval"]["episodes"]), ""]
    lines += [f"![shots](plots/{plots['shots'].name})", ""]
    lines += [f"- {meaning}" for meaning in MEANINGS] + [""]
    seeds = list(summary["eval"]["episodes"])
    lines += ["## Novel-label classification (open accuracy, argmax over the whole vocabulary)", ""]
    lines += [
        "| condition | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |",
        "|---" * (len(seeds) + 2) + "|",
    ]
    for condition, values in episode_table(summary["eval"]["episodes"]):
        lines.append(f"| {condition} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {_spread(values)} |")
    lines += ["", "## Captioning and VQA (generic evaluator, task files in flamingo/quickstart/tasks)", ""]
    lines += _generic_table(summary["eval"]["generic"], summary["eval"].get("generic_no_demos", {}))
    by_kind = summary["eval"].get("vqa_by_kind")
    if by_kind and by_kind["scores"]:
        none = (summary["eval"].get("vqa_by_kind_no_demos") or {}).get("scores", {})
        by_kind = {
            **by_kind,
            "scores": {k: {**({"none": none[k]["0"]} if "0" in none.get(k, {}) else {}), **v}
                       for k, v in by_kind["scores"].items()},
        }  # fmt: skip
        shots = sorted(
            {s for v in by_kind["scores"].values() for s in v}, key=lambda s: -1 if s == "none" else int(s)
        )
        lines += [
            "",
            "VQA accuracy by question kind (all seeds; most frequent wrong outputs, with the answer):",
            "",
        ]
        lines += [
            "| kind | "
            + " | ".join(_shots_label(s) for s in shots)
            + " | wrong outputs (with demonstrations) |",
            "|---" * (len(shots) + 2) + "|",
        ]
        for kind, scores in by_kind["scores"].items():
            wrong = "; ".join(
                f"`{raw}` for `{answer}` x{n}" for raw, answer, n in by_kind["errors"].get(kind, [])
            )
            cells = " | ".join(f"{scores[s]:.1f}" if s in scores else "" for s in shots)
            lines.append(f"| {kind} | {cells} | {wrong} |")
        cast = summary.get("world", {}).get("vqa_cast")
        if cast:
            pets = ", ".join(f"`{pet['name']}` (the {pet['colour']} {pet['shape']})" for pet in cast)
            lines += [
                "",
                f"`name` questions ask for the names of {pets}, held out of all training: only a demonstration "
                "about the same pet carries the answer.",
            ]
    captions = summary["eval"].get("caption_outputs")
    if captions and captions["exact"]:
        bare = summary["eval"].get("caption_outputs_no_demos") or {"exact": {}, "errors": {}}
        rows = [("none", bare["exact"]["0"], bare["errors"]["0"])] if "0" in bare["exact"] else []
        rows += [(s, share, captions["errors"].get(s, [])) for s, share in captions["exact"].items()]
        lines += [
            "",
            "Captions equal to a reference caption (all seeds), and the most frequent other outputs:",
            "",
            "| shots | exact | most frequent other outputs |",
            "|---|---|---|",
        ]
        for shots, share, wrong in rows:
            others = "; ".join(f"`{text}` x{n}" for text, n in wrong)
            lines.append(f"| {_shots_label(shots)} | {share:.3f} | {others} |")
    lines += ["", "## Backbones", ""]
    lines.append("- tiny CLIP: " + ", ".join(f"{k} {v:.3f}" for k, v in summary["clip"]["metrics"].items()))
    copy = ", ".join(f"step {s}: {a:.3f}" for s, a in summary["lm"]["copy_accuracy"])
    lines.append(f"- LM held-out copy accuracy ({summary['lm']['steps']} steps): {copy}")
    validation = summary["build"]["validation"]
    lines += ["", "## Data", ""]
    lines.append(
        f"- shards valid: {validation['ok']}; documents {validation['documents']}, images {validation['images']}"
    )
    lines += ["", "## Stage timings (seconds)", ""]
    lines += [f"- {stage}: {seconds:.1f}" for stage, seconds in summary["timings"].items()]
    if summary.get("lm", {}).get("beside_clip"):
        lines += [
            "",
            "The world and lm stages ran one after the other in a second process, beside the clip stage.",
        ]
    lines += ["", "## Artifacts", ""]
    lines += [f"- {name}: `{path}`" for name, path in summary["paths"].items()]
    lines += ["", f"![losses](plots/{plots['losses'].name})", ""]
    return "\n".join(lines)


def _shots_label(shots: str) -> str:
    return "0 shots, no demonstrations" if shots == "none" else f"{shots} shots"


def _generic_table(generic: dict[str, Any], no_demos: dict[str, Any]) -> list[str]:
    """Markdown rows: each task's mean score (and spread over seeds) at every shot count, with the 0-shot
    score of a prompt without any demonstration beside OpenFlamingo's 0-shot (two text-only ones)."""
    lines = [
        "| task (metric) | 0 shots, no demonstrations | 0 shots (OpenFlamingo: 2 text-only demonstrations) "
        "| 4 shots | 8 shots |",
        "|---|---|---|---|---|",
    ]
    for task, data in generic.items():
        cells = []
        for shots in ("0", "4", "8"):  # the quickstart's shot counts
            per_seed = list((data.get("scores", {}).get(shots) or {}).get("per_seed", {}).values())
            cells.append(_spread(per_seed) if per_seed else "")
        none = shot_scores(no_demos.get(task, {})).get("0")
        none_cell = f"{none:.3f}" if none is not None else ""
        lines.append(f"| {task} ({data.get('metric', '')}) | {none_cell} | " + " | ".join(cells) + " |")
    return lines


def write_report(out: Path, summary: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``report.md`` and a self-contained ``report.html`` (plots and pictures embedded)."""
    plots = _plots(out, summary)
    markdown = _markdown(summary, plots)
    (out / "report.md").write_text(markdown)
    urls = {
        f"plots/{path.name}": f"data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"
        for path in plots.values()
    }
    body = markdown_html(markdown, {"plots/" + plots["shots"].name: urls["plots/" + plots["shots"].name]})
    pictures = "".join(
        f'<h2>{name}</h2><img src="{urls["plots/" + path.name]}">'
        for name, path in plots.items()
        if name != "shots"
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>flamingo quickstart</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{padding:4px;text-align:center;"
        "border:1px solid #999}table{border-collapse:collapse;margin:8px 0}</style></head><body>"
        f"{body}<h2>Example 4-shot episodes (held-out names)</h2>{_examples_html(summary)}{pictures}</body></html>"
    )
    (out / "report.html").write_text(page)
    return out / "report.md", out / "report.html"


def markdown_html(markdown: str, pictures: dict[str, str] | None = None) -> str:
    """HTML for the Markdown that :func:`_markdown` writes: headings, paragraphs, ``- `` lists, pipe tables (the
    first row a header), inline ``code`` and ``**bold**``. A picture line ``![alt](src)`` shows ``pictures[src]``
    (a data URL) in its place; other picture lines are dropped (the HTML embeds those plots itself)."""
    parts: list[str] = []
    table: list[list[str]] = []
    items: list[str] = []

    def flush() -> None:
        if table:
            head, *rows = table
            cells = "".join(f"<th>{_inline_html(c)}</th>" for c in head)
            body = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in rows)
            parts.append(f"<table><tr>{cells}</tr>{body}</table>")
            table.clear()
        if items:
            parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            if items:
                flush()
            if not line.startswith("|---"):
                table.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if line.startswith("- "):
            if table:
                flush()
            items.append(line[2:])
            continue
        flush()
        picture = re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", line.strip())
        if picture and picture[2] in (pictures or {}):
            parts.append(f'<p><img alt="{html.escape(picture[1])}" src="{(pictures or {})[picture[2]]}"></p>')
            continue
        if not line.strip() or line.startswith("!["):
            continue
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            parts.append(f"<h{level}>{_inline_html(line.lstrip('# '))}</h{level}>")
        else:
            parts.append(f"<p>{_inline_html(line)}</p>")
    flush()
    return "".join(parts)


def _inline_html(text: str) -> str:
    """Escaped text with ``code`` spans as <code> and ``**bold**`` as <b>."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
