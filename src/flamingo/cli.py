"""``flamingo <subcommand>``: each subcommand parses its arguments and calls one library function.

Packages contribute subcommands through a module with ``register(subparsers)`` (listed in ``_COMMAND_MODULES``);
each registered parser sets ``func`` to a callable taking the parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

_COMMAND_MODULES = (
    "flamingo.model.cli",
    "flamingo.data.cli",
    "flamingo.train.cli",
    "flamingo.eval.cli",
    "flamingo.serve.cli",
    "flamingo.quickstart",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flamingo",
        description="Build, train, evaluate and serve Flamingo-style vision-language models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(
                err.name
            ):  # that package has no commands (yet); a missing dependency still raises
                continue
            raise
        if hasattr(module, "register"):
            module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as err:
        # Errors meant for the user carry their own explanation; a traceback would only hide it.
        print(f"flamingo {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
