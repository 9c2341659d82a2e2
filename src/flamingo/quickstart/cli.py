"""``flamingo quickstart [--out DIR] [--seeds N] [--small] [--threads N] [--config FILE]``."""

from __future__ import annotations

import argparse

from flamingo.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``quickstart`` subcommand to the ``flamingo`` command line."""
    parser = subparsers.add_parser(
        "quickstart",
        help="run the whole system end to end on a drawn world (CPU, no downloads, ~10 minutes)",
        description="Draw a world of coloured shapes, write it as web pages (WARC), pretrain a tiny CLIP and a "
        "small LM, build interleaved shards with the builder, train the adapters with the trainer, evaluate "
        "in-context learning (novel labels, captions, VQA) and write report.md / report.html.",
    )
    parser.add_argument("--out", default=None, help="output folder (default runs/quickstart[-small])")
    parser.add_argument("--seeds", type=int, default=3, help="evaluation seeds (default 3)")
    parser.add_argument("--small", action="store_true", help="the few-minute CI configuration")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when the CPU is shared)")
    parser.add_argument(
        "--config",
        default=None,
        help="YAML or JSON file of QuickstartConfig fields to change (e.g. train_steps: 800), applied on top "
        "of the default or --small configuration",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from flamingo.quickstart.run import QuickstartConfig, run_quickstart

    if not 1 <= args.seeds <= 1000:
        raise UsageError(f"--seeds must be from 1 to 1000, got {args.seeds}")
    if not 1 <= args.threads <= 1024:
        raise UsageError(f"--threads must be from 1 to 1024, got {args.threads}")
    seeds = tuple(range(args.seeds))
    if args.small:
        config = QuickstartConfig.small(out=args.out or "runs/quickstart-small", seeds=seeds)
    else:
        config = QuickstartConfig(out=args.out or "runs/quickstart", seeds=seeds)
    config.threads = args.threads
    if args.config:
        config = config.updated(_read_overrides(args.config), source=args.config)
    run_quickstart(config)
    return 0


def _read_overrides(path: str) -> dict:
    """The mapping of QuickstartConfig fields in a YAML or JSON file; errors name the file."""
    from flamingo.configs import read_mapping

    return read_mapping(path, "quickstart config")
