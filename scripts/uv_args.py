"""Print pip's package-index configuration as uv options, for ``scripts/setup.sh``.

uv does not read pip's configuration files or ``PIP_*`` variables, so the indexes, local wheel folders,
constraints and certificate bundle that pip is configured with on this machine are passed on explicitly. The
output is bash: ``UV_ARGS=(...)`` and, when pip has a certificate bundle, ``export SSL_CERT_FILE=...``.
Later sources win, as in pip: the ``[global]`` section, then ``[install]``, then ``PIP_*`` variables.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

_PRIORITY = {"global": 0, "install": 1, ":env:": 2}
_LIST_OPTIONS = {"extra-index-url": "--extra-index-url", "find-links": "--find-links", "constraint": "-c"}


def pip_config() -> dict[str, str]:
    """``{option: value}`` from ``pip config list``, the highest-priority source winning."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    found: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        name, sep, value = line.partition("=")
        if not sep or "." not in name:
            continue
        section, _, key = name.rpartition(".")
        rank = _PRIORITY.get(section)
        if rank is None:
            continue
        value = value.strip().strip("'\"")
        if key not in found or rank >= found[key][0]:
            found[key] = (rank, value)
    return {key: value for key, (_, value) in found.items()}


def uv_arguments(config: dict[str, str]) -> list[str]:
    """The ``uv pip install`` options equivalent to pip's index configuration."""
    args = ["--index-strategy", "unsafe-best-match"]  # pip's rule: the best version over all indexes
    if config.get("no-index", "").lower() in {"1", "true", "yes", "on"}:
        args.append("--no-index")
    if config.get("index-url"):
        args += ["--index-url", config["index-url"]]
    for key, flag in _LIST_OPTIONS.items():
        for value in config.get(key, "").split():
            args += [flag, value]
    for host in config.get("trusted-host", "").split():
        args += ["--allow-insecure-host", host]
    return args


def main() -> None:
    config = pip_config()
    print("UV_ARGS=(" + " ".join(shlex.quote(a) for a in uv_arguments(config)) + ")")
    if config.get("cert"):
        print(f"export SSL_CERT_FILE={shlex.quote(config['cert'])}")


if __name__ == "__main__":
    main()
