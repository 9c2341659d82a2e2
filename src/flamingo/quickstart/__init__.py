"""``flamingo quickstart``: the whole system end to end on a laptop CPU, on a procedurally drawn world.

Importing this package registers the quickstart's small LM type with ``transformers`` (``AutoConfig`` and
``AutoModelForCausalLM``), so checkpoints that store it load with ``Flamingo.from_pretrained``.
"""

from __future__ import annotations

import argparse

from flamingo.quickstart.lm import register as _register_lm

_register_lm()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``quickstart`` subcommand to the ``flamingo`` command line."""
    from flamingo.quickstart.cli import add_parser

    add_parser(subparsers)
