"""Data subcommands: ``flamingo data validate|stats PATHS`` (the builder adds ``build|show|convert``, see
``flamingo.build.cli``)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="build, convert, inspect and validate datasets")
    commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    validate = commands.add_parser("validate", help="report every problem of every sample of the shards")
    validate.add_argument("paths", nargs="+", help="shard files, globs, brace patterns or folders")
    validate.add_argument("--no-images", action="store_true", help="do not decode the images")
    validate.add_argument("--json", help="also write the report as JSON to this file")
    validate.add_argument("--max-issues", type=int, default=50, help="issues printed (all go to --json)")
    validate.set_defaults(func=_validate)

    stats = commands.add_parser("stats", help="counts and distributions of the shards (JSON)")
    stats.add_argument("paths", nargs="+", help="shard files, globs, brace patterns or folders")
    stats.add_argument("--sim-threshold", type=float, default=0.24, help="similarity threshold to report")
    stats.set_defaults(func=_stats)


def _validate(args: argparse.Namespace) -> int:
    from flamingo.data.validate import validate_shards, write_report

    report = validate_shards(args.paths, check_images=not args.no_images)
    print(report.to_text(args.max_issues))
    if args.json:
        write_report(report, args.json)
    return 0 if report.ok else 1


def _stats(args: argparse.Namespace) -> int:
    from flamingo.data.validate import shard_stats

    print(json.dumps(shard_stats(args.paths, args.sim_threshold), indent=2))
    return 0
