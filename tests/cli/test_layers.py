"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and they catch a forbidden import.

The contracts are checked by import-linter (the `dev` extra) on the repository's code and on a copy of it into
which a test writes one import that breaks a layer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

importlinter = pytest.importorskip("importlinter", reason="in the dev extra (bash scripts/setup.sh dev)")

ROOT = Path(__file__).resolve().parents[2]
# Where import-linter is installed, kept on the path of the subprocess whose PYTHONPATH points at a copy of src.
LINTER_PATH = str(Path(importlinter.__file__).parents[1])


def lint_imports(src: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the repository's contracts, on the package found under ``src``."""
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(src), LINTER_PATH])},
    )


def copy_of_src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "flamingo", src / "flamingo", ignore=shutil.ignore_patterns("__pycache__"))
    return src


def add_import(module: Path, statement: str) -> None:
    module.write_text(module.read_text() + f"\n\ndef _added():\n    {statement}\n")


def test_the_code_keeps_its_contracts(tmp_path) -> None:
    done = lint_imports(ROOT / "src", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "flamingo layers KEPT" in done.stdout and "nothing imports the quickstart KEPT" in done.stdout


@pytest.mark.parametrize(
    ("module", "statement", "broken"),
    [
        # the model core reaching up to the serving layer (even inside a function)
        ("model/lm.py", "from flamingo.serve import cli", "flamingo layers BROKEN"),
        # the inference API importing the evaluation, a sibling of its layer
        ("pipeline.py", "from flamingo.eval import postprocess", "flamingo layers BROKEN"),
        # the command line importing the quickstart, which only runs it by name
        ("cli.py", "import flamingo.quickstart.cli", "nothing imports the quickstart BROKEN"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path, module: str, statement: str, broken: str) -> None:
    src = copy_of_src(tmp_path)
    assert lint_imports(src, tmp_path).returncode == 0  # the copy is as good as the original
    add_import(src / "flamingo" / module, statement)
    done = lint_imports(src, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert broken in done.stdout


def test_every_top_level_module_has_a_layer(tmp_path) -> None:
    """The layers contract is exhaustive: a new module of the package must be placed in it."""
    src = copy_of_src(tmp_path)
    (src / "flamingo" / "stray.py").write_text('"""A module no layer names."""\n')
    done = lint_imports(src, tmp_path)
    assert done.returncode != 0 and "stray" in done.stdout + done.stderr
