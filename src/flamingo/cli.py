"""``flamingo <subcommand>``: each subcommand parses its arguments and calls one library function.

Packages contribute subcommands through a module with ``register(subparsers)`` (listed in ``_COMMAND_MODULES``);
each registered parser sets ``func`` to a callable taking the parsed namespace and returning an exit code.
The command modules import only argparse (and tiny modules such as ``flamingo.errors``) at the top and their
package when a command runs, so that ``flamingo --help`` and ``flamingo <command> --help`` start at once;
``tests/cli/test_cli.py`` checks that building the parser loads neither torch nor transformers.

Errors: a :class:`~flamingo.errors.FlamingoError` (a mistake in what the user gave, explained in its message),
a missing file and a missing optional dependency are printed as one line with exit status 1; any other
exception is a bug and propagates with its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from flamingo.errors import FlamingoError

# Imported by name: the top-level CLI depends on no package at import time, and the quickstart (which nothing
# imports) is reached only here. ``flamingo.corpus.cli`` adds its commands to the ``data`` group made before it.
_COMMAND_MODULES = (
    "flamingo.model.cli",
    "flamingo.data.cli",
    "flamingo.corpus.cli",
    "flamingo.train.cli",
    "flamingo.eval.cli",
    "flamingo.serve.cli",
    "flamingo.quickstart.cli",
)


class _VersionAction(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("flamingo-vlm")
        except PackageNotFoundError:  # a source checkout on PYTHONPATH, not installed
            from flamingo import __version__

            text = f"{__version__} (not installed)"
        print(f"{parser.prog} {text}")  # on stdout, like argparse's own version action
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flamingo",
        description="Build, train, evaluate and serve Flamingo-style vision-language models.",
    )
    parser.add_argument("--version", action=_VersionAction)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(
                err.name
            ):  # that package has no commands; a missing dependency raises
                continue
            raise
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
    except FlamingoError as err:  # the message is the explanation; a traceback would only hide it
        _fail(args.command, str(err))
    except FileNotFoundError as err:  # a path the user gave, opened by the library or by Python itself
        _fail(
            args.command, str(err) if err.filename is None else f"{err.filename}: no such file or directory"
        )
    except ModuleNotFoundError as err:
        if not err.name or err.name.split(".")[0] == "flamingo":
            raise  # a module of this package missing is a bug
        _fail(
            args.command,
            f"{err}: this command needs an optional dependency; `bash scripts/setup.sh` installs them all "
            "(or pip install 'flamingo-vlm[open-clip,eval,corpus,serve,train,demo]')",
        )
    return 1


def _fail(command: str, message: str) -> None:
    print(f"flamingo {command}: error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
