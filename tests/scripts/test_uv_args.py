"""scripts/uv_args.py: pip's index configuration passed on to uv by scripts/setup.sh."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "uv_args.py"


def _module():
    spec = importlib.util.spec_from_file_location("uv_args", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_index_option_becomes_the_uv_option():
    args = _module().uv_arguments(
        {
            "index-url": "https://mirror/simple",
            "extra-index-url": "file:///a/simple file:///b/simple",
            "find-links": "/wheels",
            "constraint": "/etc/caps.txt",
            "trusted-host": "mirror",
            "no-index": "false",
        }
    )
    assert args == [
        "--index-strategy", "unsafe-best-match",
        "--index-url", "https://mirror/simple",
        "--extra-index-url", "file:///a/simple", "--extra-index-url", "file:///b/simple",
        "--find-links", "/wheels",
        "-c", "/etc/caps.txt",
        "--allow-insecure-host", "mirror",
    ]  # fmt: skip
    assert "--no-index" in _module().uv_arguments({"no-index": "1"})


def test_pip_configuration_is_read_with_environment_variables_winning(tmp_path):
    config = tmp_path / "pip.conf"
    config.write_text(
        "[global]\nfind-links = /from-file\nextra-index-url = file:///x/simple\ncert = /ca.pem\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PIP_")},
        "PIP_CONFIG_FILE": str(config),
        "PIP_FIND_LINKS": "/from-env",
    }
    out = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "--find-links /from-env" in out and "/from-file" not in out
    assert "--extra-index-url file:///x/simple" in out
    assert "export SSL_CERT_FILE=/ca.pem" in out
    # the output is bash that setup.sh evaluates
    shown = subprocess.run(
        ["bash", "-c", out + '\nprintf "%s\\n" "${UV_ARGS[@]}"'], capture_output=True, text=True, check=True
    ).stdout.split()
    assert shown[:2] == ["--index-strategy", "unsafe-best-match"] and "/from-env" in shown
