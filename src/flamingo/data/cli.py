"""Data subcommands: ``flamingo data validate|stats PATHS`` (the builder adds ``build|show|convert``, see
``flamingo.corpus.cli``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from flamingo.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="build, convert, inspect and validate datasets")
    commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    validate = commands.add_parser(
        "validate",
        help="report every problem of every sample of the shards",
        description="Check every sample as the trainer's loader does and count the unusable ones per reason. "
        "With --config, each data source of a training config is checked with its own settings and the "
        "model's tokenizer, so the counts are the ones training will log (read_<reason>).",
    )
    validate.add_argument(
        "paths",
        nargs="*",
        help="shard files, globs, brace patterns, folders or URLs (s3://, gs://, https://, pipe:CMD); "
        "with --config: optional",
    )
    validate.add_argument(
        "--kind",
        choices=("auto", "interleaved", "pairs", "sft"),
        default="auto",
        help="what the samples are (auto: guessed per sample); --config takes each source's kind",
    )
    validate.add_argument(
        "--config", help="a training config: check with its data sources' settings and its model's tokenizer"
    )
    validate.add_argument("--source", help="with --config: only this data source (needed to check PATHS)")
    validate.add_argument("--no-images", action="store_true", help="do not decode the images")
    validate.add_argument("--json", help="also write the report as JSON to this file")
    validate.add_argument("--max-issues", type=int, default=50, help="issues printed (all go to --json)")
    _add_retry_flags(validate)
    validate.set_defaults(func=_validate)

    stats = commands.add_parser("stats", help="counts and distributions of the shards (JSON)")
    stats.add_argument("paths", nargs="+", help="shard files, globs, brace patterns, folders or URLs")
    stats.add_argument("--sim-threshold", type=float, default=0.24, help="similarity threshold to report")
    _add_retry_flags(stats)
    stats.set_defaults(func=_stats)


def _add_retry_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--retries",
        type=int,
        help="remote shards (s3://, gs://, https://, pipe:): reopenings after a transient failure "
        "(default: the source's retries with --config, else 3)",
    )
    parser.add_argument(
        "--retry-backoff",
        type=float,
        help="seconds before the first retry, doubled for each further one (default: the source's, else 1)",
    )


def _retry(args: argparse.Namespace, source: Any = None) -> Any:
    """The retry policy the flags ask for, falling back on ``source``'s settings, then the defaults."""
    from flamingo.data.remote import RetryPolicy

    default = RetryPolicy() if source is None else RetryPolicy(source.retries, source.retry_backoff)
    retries = default.retries if args.retries is None else args.retries
    backoff = default.backoff if args.retry_backoff is None else args.retry_backoff
    if retries < 0 or backoff < 0:
        raise UsageError(f"--retries ({retries}) and --retry-backoff ({backoff}) must be 0 or more")
    return RetryPolicy(retries, backoff)


def _validate(args: argparse.Namespace) -> int:
    from flamingo.data.usable import SampleSettings
    from flamingo.data.validate import validate_shards, write_report

    if args.config is None:
        if not args.paths:
            raise ValueError(
                "name the shards to check, or give --config to check a training config's sources"
            )
        report = validate_shards(args.paths, not args.no_images, SampleSettings(kind=args.kind), _retry(args))
        print(report.to_text(args.max_issues))
        if args.json:
            write_report(report, args.json)
        return 0 if report.ok else 1
    reports = {}
    for source, paths, settings in _config_sources(args):
        name = source.name
        reports[name] = report = validate_shards(paths, not args.no_images, settings, _retry(args, source))
        print(f"source {name!r} ({settings.kind}, max_tokens {settings.max_tokens}):")
        print(report.to_text(args.max_issues))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({name: report.to_dict() for name, report in reports.items()}, handle, indent=2)
    return 0 if all(report.ok for report in reports.values()) else 1


def _config_sources(args: argparse.Namespace) -> list[tuple[str, Any, Any]]:
    """(source, shards, settings) of the config's sources to check, with the tokenizer the trainer uses."""
    from flamingo.data.loader import sample_settings
    from flamingo.train.config import load_config

    config = load_config(args.config)
    sources = [s for s in config.data.sources if args.source in (None, s.name)]
    if not sources:
        names = [s.name for s in config.data.sources]
        raise ValueError(f"{args.config}: no data source named {args.source!r}; the sources are {names}")
    if args.paths and len(sources) > 1:
        raise ValueError(f"{args.config} has several data sources: say which one PATHS are for with --source")
    if not args.paths:
        sources = [s for s in sources if s.shards]
        if not sources:
            raise ValueError(
                f"{args.config}: no data source has shards (synthetic data); name the shards to check"
            )
    tokenizer = _training_tokenizer(config.model)
    return [(s, args.paths or s.shards, sample_settings(s, tokenizer)) for s in sources]


def _training_tokenizer(model: Any) -> Any:
    """The tokenizer training uses: a checkpoint's own copy when it has one, else the model's own."""
    if model.kind == "pretrained":
        from flamingo.model.checkpoint import resolve_checkpoint_dir

        folder = resolve_checkpoint_dir(model.name) / "tokenizer"
        if folder.is_dir():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(folder))
    from flamingo.train.trainer import build_model

    return build_model(model).tokenizer


def _stats(args: argparse.Namespace) -> int:
    from flamingo.data.validate import shard_stats

    print(json.dumps(shard_stats(args.paths, args.sim_threshold, _retry(args)), indent=2))
    return 0
