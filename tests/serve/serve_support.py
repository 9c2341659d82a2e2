"""Shared fixtures: a tiny saved model, pipelines over it, an in-process app and a live `flamingo serve`."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from flamingo.serve.examples import shape_image


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Flamingo whose gates are open (so images change the output), saved with its backbones."""
    from flamingo.model.tiny import build_tiny_flamingo

    path = tmp_path_factory.mktemp("tiny-flamingo")
    build_tiny_flamingo(gate_init=0.5, seed=0).save_pretrained(str(path), save_backbones=True)
    return path


@pytest.fixture(scope="session")
def pipe(model_dir: Path):
    """The Python pipeline (paths allowed, URLs off: the library defaults)."""
    from flamingo.pipeline import FlamingoPipeline

    return FlamingoPipeline.from_pretrained(model_dir)


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    """Four distinct RGB images."""
    return [
        shape_image("circle", "red"),
        shape_image("square", "blue"),
        shape_image("triangle", "green", count=2),
        shape_image("star", "yellow", count=3),
    ]


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def live_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """``flamingo serve`` in a subprocess on a free loopback port; yields its base URL."""
    import httpx

    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "flamingo.cli", "serve", "--model", str(model_dir), "--port", str(port)]
    command += ["--batch-wait-ms", "25", "--log-level", "warning"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"flamingo serve exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"flamingo serve did not answer /health within 180 s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
