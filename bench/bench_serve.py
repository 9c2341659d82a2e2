"""Serving throughput: concurrent requests to `flamingo serve` (batched) against sequential generation.

    OMP_NUM_THREADS=1 python bench/bench_serve.py [--model DIR] [--concurrency 16 32] [--max-new-tokens 16]

Rows, all on the same model and prompts, measured in this run:
  sequential   - the Python pipeline, one request after another (the baseline; no HTTP);
  server b=1   - the server with --max-batch-size 1 (queueing and HTTP, no batching);
  server b=N   - the server batching concurrent requests (default --max-batch-size 8).
Prints a table and writes JSON to bench/results/serve.json. Not a test: nothing here gates CI.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_log

from flamingo.serve.examples import shape_image

RESULTS = Path(__file__).parent / "results" / "serve.json"


def _prompts(n: int) -> list[list]:
    """``n`` two-shot captioning prompts over four generated images (rows differ, as real traffic does)."""
    images = [
        shape_image(s, c)
        for s, c in [("circle", "red"), ("square", "blue"), ("star", "green"), ("triangle", "purple")]
    ]
    return [
        [images[i % 4], f"Output:shape {i % 4}<|endofchunk|>\n", images[(i + 1) % 4], "Output:"]
        for i in range(n)
    ]


def _request_body(row: list, max_new_tokens: int) -> dict:
    parts = []
    for item in row:
        if isinstance(item, str):
            parts.append({"type": "text", "text": item})
        else:
            buffer = io.BytesIO()
            item.save(buffer, format="PNG")
            parts.append({"type": "image", "base64": base64.b64encode(buffer.getvalue()).decode()})
    return {"prompt": parts, "max_new_tokens": max_new_tokens}


def _summary(name: str, concurrency: int, latencies: list[float], wall: float, batches: int | None) -> dict:
    ms = np.array(latencies) * 1000
    return {
        "mode": name,
        "concurrency": concurrency,
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "mean_batch": round(len(latencies) / batches, 2) if batches else None,
    }


def bench_sequential(model: str, rows: list[list], max_new_tokens: int) -> dict:
    from flamingo.pipeline import FlamingoPipeline

    pipe = FlamingoPipeline.from_pretrained(model)
    pipe(rows[0], max_new_tokens=max_new_tokens)  # warm-up
    latencies, start = [], time.perf_counter()
    for row in rows:
        t0 = time.perf_counter()
        pipe(row, max_new_tokens=max_new_tokens)
        latencies.append(time.perf_counter() - t0)
    return _summary("sequential", 1, latencies, time.perf_counter() - start, len(rows))


class Server:
    """`flamingo serve` in a subprocess on a free loopback port."""

    def __init__(self, model: str, max_batch_size: int) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        command = [sys.executable, "-m", "flamingo.cli", "serve", "--model", model, "--port", str(self.port)]
        command += ["--max-batch-size", str(max_batch_size), "--log-level", "warning"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.5)
        raise RuntimeError("flamingo serve did not start")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def bench_server(server: Server, name: str, rows: list[list], concurrency: int, max_new_tokens: int) -> dict:
    import httpx

    bodies = [_request_body(r, max_new_tokens) for r in rows]
    with httpx.Client(timeout=300) as client:
        client.post(f"{server.url}/v1/generate", json=bodies[0]).raise_for_status()  # warm-up
        before = client.get(f"{server.url}/health").json()["worker"]["batches"]

        def call(body: dict) -> float:
            t0 = time.perf_counter()
            client.post(f"{server.url}/v1/generate", json=body).raise_for_status()
            return time.perf_counter() - t0

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            latencies = list(pool.map(call, bodies))
        wall = time.perf_counter() - start
        batches = client.get(f"{server.url}/health").json()["worker"]["batches"] - before
    return _summary(name, concurrency, latencies, wall, batches)


def _print_table(rows: list[dict]) -> None:
    header = f"{'mode':<14}{'conc':>5}{'reqs':>6}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'batch':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        batch = "-" if r["mean_batch"] is None else f"{r['mean_batch']:.1f}"
        print(
            f"{r['mode']:<14}{r['concurrency']:>5}{r['requests']:>6}{r['requests_per_s']:>9.2f}"
            f"{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{batch:>7}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="checkpoint directory (default: a tiny random model built here)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from flamingo.model.tiny import build_tiny_flamingo

            model = str(Path(tmp) / "tiny")
            build_tiny_flamingo(gate_init=0.5).save_pretrained(model, save_backbones=True)
        most = max(args.concurrency)
        results = [bench_sequential(model, _prompts(most), args.max_new_tokens)]
        for batch_size in (1, args.max_batch_size):
            with Server(model, batch_size) as server:
                for c in args.concurrency:
                    name = f"server b={batch_size}"
                    results.append(bench_server(server, name, _prompts(c), c, args.max_new_tokens))
    _print_table(results)
    meta = {
        "model": args.model or "tiny random (llama family, build_tiny_flamingo)",
        "max_new_tokens": args.max_new_tokens,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    results_log.record(args.out, {"meta": meta, "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
