"""Where a benchmark's results go: ``bench/results/<name>.json`` holds every run of that benchmark and setup,
oldest first, as ``{"runs": [run, ...]}``. Each run is the script's own result dictionary plus where and how it
was measured: ``date`` (UTC, ISO), ``cpu`` (the processor's model name), ``gpu`` (for GPU runs) and
``command`` (the command line that produced it). ``bench/make_benchmarks_page.py`` turns the latest run of each
file into ``docs/benchmarks.md``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The processor's model name as the kernel reports it (``lscpu``'s "Model name"), with the core count."""
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux
        pass
    return f"{name or platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def command_line(argv: list[str] | None = None) -> str:
    """The command that ran this script, with the script's path relative to the repository."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0])
    if script.is_absolute():
        with contextlib.suppress(ValueError):  # a script outside the repository keeps its full path
            script = script.relative_to(Path(__file__).resolve().parents[1])
    return shlex.join(["python", str(script), *argv[1:]])


def record(path: str | Path, result: dict[str, Any], gpu: str | None = None) -> dict[str, Any]:
    """Append ``result`` with its date, machine and command to the runs in ``path`` (created if missing)."""
    path = Path(path)
    runs: list[dict[str, Any]] = []
    if path.is_file():
        runs = json.loads(path.read_text())["runs"]
    run = {
        "date": datetime.datetime.now(datetime.UTC).date().isoformat(),
        "cpu": cpu_model(),
        **({"gpu": gpu} if gpu else {}),
        "command": command_line(),
        **result,
    }
    runs.append(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    return run
