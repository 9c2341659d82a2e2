"""Every ``flamingo`` command in the shell blocks of the README and the docs pages parses with the real CLI, and
every training command's preset and dotted overrides load: the documentation cannot drift from the code without a
test failing."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def shell_blocks(markdown: str) -> list[str]:
    """The bodies of fenced ``bash`` / ``sh`` / unlabelled code blocks, line continuations joined."""
    blocks, current, language = [], None, ""
    for line in markdown.splitlines():
        if line.startswith("```"):
            if current is None:
                current, language = [], line[3:].strip()
            else:
                if language in ("bash", "sh", ""):
                    blocks.append(re.sub(r"\\\n\s*", " ", "\n".join(current)))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def flamingo_commands(markdown: str) -> list[list[str]]:
    """The arguments of each ``flamingo`` / ``-m flamingo.cli`` invocation (``[--flag]`` read as ``--flag``)."""
    commands = []
    for block in shell_blocks(markdown):
        for line in block.splitlines():
            lexer = shlex.shlex(line.replace("[", " ").replace("]", " "), posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            try:
                tokens = list(lexer)
            except ValueError:  # not shell (a JSON or a file listing)
                continue
            command: list[str] | None = None
            for token in [*tokens, ";"]:
                if token in (";", "&&", "||", "|", "&"):
                    if command is not None:
                        commands.append(command)
                    command = None
                elif command is not None:
                    command.append(token)
                elif token.endswith("/flamingo") or token in ("flamingo", "flamingo.cli"):
                    command = []
    return commands


README_COMMANDS = flamingo_commands((ROOT / "README.md").read_text())
DOCS_COMMANDS = [
    (page.name, argv)
    for page in sorted((ROOT / "docs").glob("*.md"))
    for argv in flamingo_commands(page.read_text())
]


def test_the_readme_shows_every_subcommand() -> None:
    """Every subcommand the CLI has (and every choice of a command's first positional) has an example."""
    import argparse

    from flamingo.cli import build_parser

    def names(parser: argparse.ArgumentParser, prefix: str) -> set[str]:
        found = {prefix} if prefix else set()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found |= names(sub, f"{prefix} {name}".strip())
            elif prefix and not action.option_strings and action.choices:
                found |= {f"{prefix} {choice}" for choice in action.choices}
        return found

    expected = names(build_parser(), "")
    seen = {" ".join(c[:n]) for c in README_COMMANDS for n in (1, 2, 3)}
    assert {"data build", "convert from-openflamingo", "eval report"} <= expected  # the walk finds them
    assert expected <= seen, sorted(expected - seen)


@pytest.mark.parametrize(
    ("page", "argv"),
    [("README.md", argv) for argv in README_COMMANDS] + DOCS_COMMANDS,
    ids=lambda value: " ".join(value)[:70] if isinstance(value, list) else value,
)
def test_documented_command_parses(page: str, argv: list[str]) -> None:
    from flamingo.cli import build_parser

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:  # argparse prints the reason to stderr
        pytest.fail(f"{page}: `flamingo {shlex.join(argv)}` does not parse (exit {exit.code})")
    assert getattr(args, "func", None) is not None
    if args.command == "train" and args.config:
        from flamingo.train.config import load_config

        assert (ROOT / args.config).is_file(), f"{page}: {args.config} is not in the repository"
        load_config(ROOT / args.config, list(args.overrides))  # unknown fields and bad values raise


def python_blocks(markdown: str) -> list[str]:
    blocks, current = [], None
    for line in markdown.splitlines():
        if line.startswith("```"):
            if current is None and line[3:].strip() == "python":
                current = []
            elif current is not None:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_readme_python_examples_on_the_tiny_model_run(tmp_path, monkeypatch, capsys) -> None:
    """The README's Python examples that use ``runs/tiny`` run as written, after ``flamingo tiny-model``."""
    import torch

    from flamingo.cli import main

    blocks = [b for b in python_blocks((ROOT / "README.md").read_text()) if '"runs/tiny"' in b]
    assert len(blocks) >= 2  # the model API and the pipeline
    monkeypatch.chdir(tmp_path)
    assert main(["tiny-model", "--out", "runs/tiny"]) == 0
    namespaces = []
    for block in blocks:
        namespaces.append({})
        exec(compile(block, "README.md", "exec"), namespaces[-1])  # the README's own example, as written
    assert len(capsys.readouterr().out.splitlines()) >= 2 * len(blocks)  # every example prints its answers
    (model_example,) = [n for n in namespaces if "logits_again" in n]
    # the README says encode_media's output can be passed back in: the logits must not change
    torch.testing.assert_close(model_example["logits_again"], model_example["logits"], rtol=0, atol=1e-5)
