"""The ``flamingo`` command line: it starts without the heavy libraries, and it shows failures as they are."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flamingo.cli import build_parser, main
from flamingo.errors import FlamingoError, MissingFileError, UnknownNameError, UsageError

SRC = Path(__file__).resolve().parents[2] / "src"
HEAVY = ("torch", "transformers", "numpy", "PIL", "open_clip", "gradio", "fastapi")
# Generous: the parser itself takes about 0.1 s; a loaded CI machine may be many times slower.
HELP_SECONDS = 5.0

# Run in a fresh interpreter: prints which heavy modules `flamingo ARGV --help` imported, and its exit code.
_HELP_PROBE = """
import json, sys
from flamingo.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "heavy": [m for m in HEAVY if m in sys.modules]}), file=sys.stderr)
""".replace("HEAVY", repr(HEAVY))


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command of the parser tree: ``()``, ``("generate",)``, ``("data", "build")``, ..."""
    found = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += command_paths(sub, (*prefix, name))
    return found


COMMANDS = command_paths(build_parser())


def test_the_walk_finds_every_command() -> None:
    names = {" ".join(c) for c in COMMANDS}
    expected = {"", "generate", "data", "data build", "data validate", "train", "eval report", "serve"}
    assert expected | {"quickstart", "tiny-model", "convert", "data show", "data convert", "eval"} <= names


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "flamingo")
def test_help_is_fast_and_imports_no_heavy_library(command: tuple[str, ...]) -> None:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _HELP_PROBE, *command, "--help"], capture_output=True, text=True, env=_env()
    )
    seconds = time.perf_counter() - start
    probe = json.loads(done.stderr.strip().splitlines()[-1])
    assert probe == {"code": 0, "heavy": []}, done.stderr
    assert "usage: flamingo" in done.stdout
    assert seconds < HELP_SECONDS, f"`flamingo {' '.join(command)} --help` took {seconds:.1f} s"


def test_importing_the_packages_loads_no_torch() -> None:
    """Their public names are imported on first use (resolved in the next test), not by ``import``."""
    code = (
        "import sys, flamingo, flamingo.model, flamingo.data, flamingo.eval, flamingo.corpus\n"
        "assert not [m for m in HEAVY if m in sys.modules], [m for m in HEAVY if m in sys.modules]\n"
    ).replace("HEAVY", repr(HEAVY))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "package", ["flamingo", "flamingo.model", "flamingo.data", "flamingo.eval", "flamingo.corpus"]
)
def test_every_public_name_of_a_lazy_package_resolves(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match="no_such_name"):
        module.no_such_name  # noqa: B018


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("flamingo ") and out.split()[1][0].isdigit()


def test_a_user_error_is_one_line_and_exit_1(capsys) -> None:
    assert main(["eval", "--model", "m"]) == 1  # eval needs --tasks, --data-root and --out
    err = capsys.readouterr().err
    assert (
        err
        == "flamingo eval: error: flamingo eval needs --tasks, --data-root, --out (or use 'flamingo eval report').\n"
    )


def test_a_missing_file_is_one_line(tmp_path, capsys) -> None:
    missing = tmp_path / "nothing-here"
    assert main(["eval", "report", str(missing), "--out", str(tmp_path / "report")]) == 1
    assert capsys.readouterr().err == f"flamingo eval: error: {missing}: no such results file or folder.\n"


def test_flamingo_errors_subclass_the_builtin_a_caller_expects() -> None:
    assert issubclass(UsageError, ValueError) and issubclass(MissingFileError, FileNotFoundError)
    assert issubclass(UnknownNameError, KeyError)
    assert str(UnknownNameError("unknown task 'x'")) == "unknown task 'x'"  # KeyError would add quotes
    from flamingo.eval.tasks import load_task

    with pytest.raises(UnknownNameError, match=r"^unknown task 'no-such-task'"):
        load_task("no-such-task")


def test_an_internal_error_keeps_its_traceback() -> None:
    """A bug (here a KeyError inside a command) must not be reduced to "error: 'foo'"."""
    code = (
        "import sys, flamingo.train.cli as c\n"
        "def broken(args):\n"
        "    return {}['foo']\n"
        "c._train = broken\n"
        "from flamingo.cli import main\n"
        "sys.exit(main(['train']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "KeyError: 'foo'" in done.stderr
    assert "error: 'foo'" not in done.stderr


def test_a_flamingo_error_raised_by_a_command_is_one_line() -> None:
    code = (
        "import sys, flamingo.train.cli as c\n"
        "from flamingo.errors import FlamingoError\n"
        "def broken(args):\n"
        "    raise FlamingoError('configs/x.yaml: train.lr must be positive; set it to e.g. 3e-4')\n"
        "c._train = broken\n"
        "from flamingo.cli import main\n"
        "sys.exit(main(['train']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert done.returncode == 1
    assert (
        done.stderr
        == "flamingo train: error: configs/x.yaml: train.lr must be positive; set it to e.g. 3e-4\n"
    )
    assert issubclass(FlamingoError, Exception) and not issubclass(FlamingoError, ValueError)
