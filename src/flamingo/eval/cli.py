"""``flamingo eval``: run the few-shot benchmark, and ``flamingo eval report`` to tabulate and plot results.

flamingo eval --model ckpt/ --tasks coco,vqav2 --data-root data/ --shots 0,4,8 --seeds 3 --out runs/eval
torchrun --nproc-per-node 8 -m flamingo.cli eval --model ckpt/ --tasks coco --data-root data/ --out runs/eval
flamingo eval report runs/eval runs/other --out runs/report
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from flamingo.errors import MissingFileError, UsageError
from flamingo.model.devices import add_device_arguments, device_options

FIRST_SEED = 42


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval`` (and its ``report`` subcommand) to the ``flamingo`` program."""
    ev = subparsers.add_parser(
        "eval",
        help="few-shot in-context evaluation (COCO, VQAv2, ..., ImageNet); 'eval report' tabulates results",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("--model", help="checkpoint directory or hub id (Flamingo.save_pretrained format)")
    ev.add_argument(
        "--tasks", help="comma-separated task names (see flamingo.eval.list_tasks()) or YAML paths"
    )
    ev.add_argument("--data-root", help="folder holding the benchmark files the task YAMLs point into")
    ev.add_argument("--shots", default="0,4,8", help="comma-separated shot counts (default 0,4,8)")
    ev.add_argument(
        "--seeds",
        default="3",
        help="a count N (seeds 42..42+N-1) or a comma-separated list such as 42,43 (one seed: '42,')",
    )
    ev.add_argument("--out", help="output folder; each task writes <out>/<task>/results.json")
    ev.add_argument(
        "--num-samples", type=int, default=None, help="evaluate a seeded subset of each test split"
    )
    ev.add_argument("--query-set-size", type=int, default=2048, help="training examples demos are drawn from")
    ev.add_argument("--zero-shot-text-demos", type=int, default=2, help="text-only demonstrations at 0 shots")
    ev.add_argument("--rices", action="store_true", help="retrieval (RICES) demonstrations instead of random")
    ev.add_argument(
        "--rices-cache", default=None, help="folder for RICES embeddings (default <out>/rices_cache)"
    )
    ev.add_argument("--text-only-context", action="store_true", help="ablation: remove demonstration images")
    ev.add_argument("--prompt-ensembles", type=int, default=1, help="classification: average N demo orders")
    ev.add_argument(
        "--prompts",
        default=None,
        help="templates for the tasks' named prompts: 'openflamingo' (the benchmark's) or a JSON file with a "
        "'prompts' section (a config.json); default: those the checkpoint recorded",
    )
    ev.add_argument("--batch-size", type=int, default=8)
    add_device_arguments(ev, quantize=True)
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    ev.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let a model whose LM is defined by Python files in its repository run them (off by default; "
        "a model's own files can never turn this on)",
    )
    ev.set_defaults(func=_evaluate)

    sub = ev.add_subparsers(dest="eval_command", metavar="{report}")
    rep = sub.add_parser("report", help="markdown table + PNG of results beside the published numbers")
    rep.add_argument("results", nargs="+", help="results.json files or folders holding them (searched)")
    rep.add_argument("--out", dest="report_out", required=True, help="folder for report.md and the PNG")
    rep.add_argument("--label", default="this model", help="name of the evaluated model in the table")
    rep.set_defaults(func=_report)


def parse_int_list(text: str, what: str) -> list[int]:
    """``"0,4,8"`` -> ``[0, 4, 8]`` with a clear error."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise UsageError(f"--{what} {text!r}: expected comma-separated integers, e.g. 0,4,8.") from err


def parse_seeds(text: str) -> list[int]:
    """A count (``"3"`` -> 42, 43, 44) or a comma-separated list (``"42,"`` -> [42])."""
    if "," in text:
        return parse_int_list(text, "seeds")
    count = parse_int_list(text, "seeds")[0]
    if count < 1:
        raise UsageError(f"--seeds {text}: a count must be >= 1.")
    return [FIRST_SEED + i for i in range(count)]


def _evaluate(args: argparse.Namespace) -> int:
    missing = [
        f"--{n.replace('_', '-')}" for n in ("model", "tasks", "data_root", "out") if not getattr(args, n)
    ]
    if missing:
        raise UsageError(f"flamingo eval needs {', '.join(missing)} (or use 'flamingo eval report').")
    from flamingo.eval.evaluator import evaluate
    from flamingo.prompts import load_prompt_config

    results = evaluate(
        args.model,
        [t.strip() for t in args.tasks.split(",") if t.strip()],
        args.data_root,
        shots=parse_int_list(args.shots, "shots"),
        seeds=parse_seeds(args.seeds),
        num_samples=args.num_samples,
        query_set_size=args.query_set_size,
        demo_mode="rices" if args.rices else "random",
        zero_shot_text_demos=args.zero_shot_text_demos,
        text_only_context=args.text_only_context,
        prompt_ensembles=args.prompt_ensembles,
        batch_size=args.batch_size,
        out_dir=args.out,
        rices_cache_dir=args.rices_cache,
        **device_options(args),
        progress=not args.no_progress,
        trust_remote_code=args.trust_remote_code,
        prompts=None if args.prompts is None else load_prompt_config(args.prompts),
    )
    if results:  # every rank returns them; print once
        _print_scores(results, args.out)
    return 0


def _print_scores(results: dict[str, dict[str, Any]], out: str) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return
    for task, res in results.items():
        cells = [f"{s}-shot {v['mean']:.2f}±{v['std']:.2f}" for s, v in res["scores"].items()]
        print(f"{task} ({res['metric']}): " + ", ".join(cells))
    print(f"wrote {out}")


def find_results(paths: list[str]) -> list[Path]:
    """``results.json`` files named directly or found under the given folders, in order."""
    found: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(path.rglob("results.json")))
        else:
            raise MissingFileError(f"{path}: no such results file or folder.")
    if not found:
        raise MissingFileError(f"no results.json under {paths}; run 'flamingo eval' first.")
    return found


def _report(args: argparse.Namespace) -> int:
    from flamingo.eval.results import report

    results = [json.loads(p.read_text("utf-8")) for p in find_results(args.results)]
    paths = report(results, args.report_out, label=args.label)
    print(f"wrote {paths['markdown']} and {paths['png']}")
    return 0
