"""scripts/setup.sh stops when an install fails, even though it filters pip's output."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

SETUP = Path(__file__).resolve().parents[2] / "scripts" / "setup.sh"


def run_quiet(command: str) -> subprocess.CompletedProcess:
    """Runs ``quiet COMMAND`` under the script's own shell options, with the script's ``quiet`` function."""
    (function,) = re.findall(r"^quiet\(\) \{\n.*?^\}\n", SETUP.read_text(), flags=re.S | re.M)
    script = f"set -euo pipefail\n{function}\nquiet {command}\necho after\n"
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True)


def test_a_failing_install_stops_the_script() -> None:
    done = run_quiet("sh -c 'echo constraint x is ignored; echo Could not find torch; exit 3'")
    assert done.returncode == 3
    assert done.stdout == "Could not find torch\n"  # the note filtered out, the error kept, nothing after it


def test_a_successful_install_with_only_filtered_output_goes_on() -> None:
    done = run_quiet("sh -c 'echo constraint x is ignored'")  # grep then matches nothing, which is no failure
    assert done.returncode == 0 and done.stdout == "after\n"


def test_every_pip_install_goes_through_quiet() -> None:
    text = SETUP.read_text()
    assert "|| true" not in text
    for line in text.splitlines():
        if '"${PIP[@]}" install' in line:
            assert line.strip().startswith('quiet "${PIP[@]}" install'), line
