"""Serving throughput: concurrent requests to `flamingo serve` (batched) against sequential generation; and the
server's memory under a load of large images.

    OMP_NUM_THREADS=1 python bench/bench_serve.py [--model DIR] [--concurrency 16 32] [--max-new-tokens 16]
    OMP_NUM_THREADS=1 python bench/bench_serve.py --rows memory [--memory-concurrency 10 30]

Throughput rows, all on the same model and prompts, measured in this run (JSON: bench/results/serve.json):
  sequential   - the Python pipeline, one request after another (the baseline; no HTTP);
  server b=1   - the server with --max-batch-size 1 (queueing and HTTP, no batching);
  server b=N   - the server batching concurrent requests (default --max-batch-size 8).
Memory rows (JSON: bench/results/serve_memory.json):
  memory load  - a fresh server with its default limits gets C requests at once, each with 8 images of
                 4096x4096 (smooth synthetic JPEGs of about 0.5 MB); the row reports the server process's peak
                 RSS above its idle RSS (sampled every 20 ms) and how many requests got 200, 503, another
                 status, or no answer within --memory-timeout seconds.
Not a test: nothing here gates CI.
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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results_log

from flamingo.serve.examples import shape_image

RESULTS = Path(__file__).parent / "results" / "serve.json"
MEMORY_RESULTS = Path(__file__).parent / "results" / "serve_memory.json"


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

    def __init__(self, model: str, max_batch_size: int, extra: list[str] | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        command = [sys.executable, "-m", "flamingo.cli", "serve", "--model", model, "--port", str(self.port)]
        command += ["--max-batch-size", str(max_batch_size), "--log-level", "warning", *(extra or [])]
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


def large_jpeg(seed: int, side: int = 4096, quality: int = 80) -> bytes:
    """A smooth ``side`` x ``side`` picture (sums of low-frequency sines per channel) as a JPEG: it compresses
    to about 0.5 MB at 4096, as a photo of that size does, yet decodes to 64 MiB."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, side, dtype=np.float32)
    channels = []
    for _ in range(3):
        f, phase = rng.uniform(2, 9, size=4), rng.uniform(0, 2 * np.pi, size=4)
        across = np.sin(2 * np.pi * f[0] * x + phase[0]) + np.sin(2 * np.pi * f[1] * x + phase[1])
        down = np.sin(2 * np.pi * f[2] * x + phase[2]) + np.sin(2 * np.pi * f[3] * x + phase[3])
        channels.append(((down[:, None] + across[None, :] + 4) * (255 / 8)).astype(np.uint8))
    buffer = io.BytesIO()
    Image.fromarray(np.stack(channels, -1)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


def bench_memory(model: str, concurrency: int, images: list[bytes], timeout_s: float) -> dict:
    """Peak RSS above idle and the status counts of ``concurrency`` simultaneous requests of ``images``."""
    import httpx

    parts = [{"type": "image", "base64": base64.b64encode(data).decode()} for data in images]
    body = {"prompt": [*parts, {"type": "text", "text": "Output:"}], "max_new_tokens": 4}
    small = {"prompt": [{"type": "text", "text": "Output:"}], "max_new_tokens": 4}
    with Server(model, 8) as server:
        with httpx.Client(timeout=60) as client:
            client.post(f"{server.url}/v1/generate", json=small).raise_for_status()  # warm-up
        time.sleep(1.0)
        idle = _rss(server.process.pid)
        peak, sampling = [idle], True

        def sample() -> None:
            while sampling:
                peak[0] = max(peak[0], _rss(server.process.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        def call(_: int) -> str:
            try:
                with httpx.Client(timeout=timeout_s) as client:
                    return str(client.post(f"{server.url}/v1/generate", json=body).status_code)
            except httpx.TimeoutException:
                return "timeout"
            except httpx.HTTPError as err:
                return type(err).__name__

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            outcomes = list(pool.map(call, range(concurrency)))
        wall = time.perf_counter() - start
        sampling = False
        sampler.join()
    counts = {key: outcomes.count(key) for key in sorted(set(outcomes))}
    return {
        "mode": "memory load",
        "concurrency": concurrency,
        "images_per_request": len(images),
        "image_side": 4096,
        "image_kb": round(sum(len(d) for d in images) / len(images) / 1024, 1),
        "idle_rss_mb": round(idle / 2**20, 1),
        "peak_rss_above_idle_mb": round((peak[0] - idle) / 2**20, 1),
        "status_counts": counts,
        "wall_s": round(wall, 2),
    }


def _print_memory(rows: list[dict]) -> None:
    header = f"{'mode':<14}{'conc':>5}{'images':>7}{'idle MB':>9}{'peak+ MB':>10}{'wall s':>8}  statuses"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['mode']:<14}{r['concurrency']:>5}{r['images_per_request']:>7}{r['idle_rss_mb']:>9.0f}"
            f"{r['peak_rss_above_idle_mb']:>10.0f}{r['wall_s']:>8.1f}  {r['status_counts']}"
        )


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


def _meta(args: argparse.Namespace) -> dict:
    return {
        "model": args.model or "tiny random (llama family, build_tiny_flamingo)",
        "max_new_tokens": args.max_new_tokens,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="checkpoint directory (default: a tiny random model built here)")
    parser.add_argument(
        "--rows", nargs="+", choices=["throughput", "memory"], default=["throughput", "memory"]
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--memory-concurrency", type=int, nargs="+", default=[10, 30])
    parser.add_argument(
        "--memory-timeout", type=float, default=120.0, help="client timeout of a memory request"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--memory-out", type=Path, default=MEMORY_RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from flamingo.model.tiny import build_tiny_flamingo

            model = str(Path(tmp) / "tiny")
            build_tiny_flamingo(gate_init=0.5).save_pretrained(model, save_backbones=True)
        if "throughput" in args.rows:
            most = max(args.concurrency)
            results = [bench_sequential(model, _prompts(most), args.max_new_tokens)]
            for batch_size in (1, args.max_batch_size):
                with Server(model, batch_size) as server:
                    for c in args.concurrency:
                        name = f"server b={batch_size}"
                        results.append(bench_server(server, name, _prompts(c), c, args.max_new_tokens))
            _print_table(results)
            results_log.record(args.out, {"meta": _meta(args), "results": results})
            print(f"wrote {args.out}")
        if "memory" in args.rows:
            images = [large_jpeg(seed) for seed in range(8)]
            memory = [bench_memory(model, c, images, args.memory_timeout) for c in args.memory_concurrency]
            _print_memory(memory)
            results_log.record(args.memory_out, {"meta": _meta(args), "results": memory})
            print(f"wrote {args.memory_out}")


if __name__ == "__main__":
    main()
