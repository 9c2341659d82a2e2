"""Throughput of the interleaved dataset builder, stage by stage and end to end, on a synthetic crawl.

A corpus of WARC files is generated (pages with textured images served by a local 127.0.0.1 server), then:

  * each CPU stage alone in this process (one core): documents per second for read/extract, fetch,
    filters (size rules + hashing, corpus-wide dedup planning, face detection) and interleave (tiny CLIP);
  * the CLIP stage alone: images per second through ``ClipEmbedder.embed_images`` (tiny random CLIP on CPU;
    pass ``--clip open_clip:ViT-L-14:openai`` on a GPU machine for the real model);
  * the whole pipeline: local engine with 1 and 2 worker processes, Ray Data with 1 and 2 workers.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_build.py            # writes bench/results/build_cpu.json
    .venv/bin/python bench/bench_build.py --pages 24 --files 2 --no-ray   # quicker

With ``--quality`` it measures text extraction instead, on real documentation pages (the Debian Administrator's
Handbook and the scikit-image docs, from their Debian packages, downloaded once into a cache folder; the
18 pages of ``tests/fixtures/real_pages`` when the download fails or ``--fixture-pages`` is given): the
builder's read stage against trafilatura in the same run, scored on the hand-checked sample in that folder's
``gold.json`` (the rules are in ``bench/extraction_quality.py``).

    .venv/bin/python bench/bench_build.py --quality      # writes bench/results/build_quality.json

Numbers are relative to each other within one run (same machine, same corpus); none gates CI.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
# One thread per process for every library (before they load): parallelism comes from the engine's workers,
# and OpenCV's own thread pool would otherwise make "1 worker" use every core in the face detector.
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENCV_FOR_THREADS_NUM": "1"}
os.environ.update(THREAD_ENV)

import extraction_quality  # noqa: E402
import results_log  # noqa: E402

from flamingo.corpus.clip import ClipEmbedder, tiny_clip_embedder  # noqa: E402
from flamingo.corpus.config import (  # noqa: E402
    BuildConfig,
    FetchConfig,
    FilterConfig,
    InterleaveConfig,
    ReadConfig,
)
from flamingo.corpus.engine import hash_records, plan_dedup, run_pipeline  # noqa: E402
from flamingo.corpus.faces import filter_faces, make_face_detector  # noqa: E402
from flamingo.corpus.fetch import fetch_documents  # noqa: E402
from flamingo.corpus.filters import filter_images, hash_images  # noqa: E402
from flamingo.corpus.interleave import interleave_documents  # noqa: E402
from flamingo.corpus.read import ReadCounts, read_input  # noqa: E402
from flamingo.corpus.sentences import split_sentences  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "corpus"))
from real_pages import FIXTURE, fixture_pages, write_pages_warc  # noqa: E402

WORDS = [
    "red",
    "blue",
    "green",
    "yellow",
    "car",
    "sea",
    "field",
    "sun",
    "house",
    "tree",
    "river",
    "city",
    "road",
]


def _image(seed: int, size: int = 192) -> bytes:
    """A tinted random block texture (distinct pHash per seed), PNG-encoded."""
    rng = np.random.default_rng(seed)
    blocks = np.kron(rng.random((12, 12)), np.ones((size // 12, size // 12)))
    tint = rng.integers(40, 230, size=3)
    pixels = (tint[None, None, :] * (0.5 + 0.5 * blocks[:, :, None])).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class _Server:
    """Serves ``files`` (path -> bytes) on 127.0.0.1."""

    def __init__(self, files: dict[str, bytes]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                body = files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # the default backlog (5) drops SYNs under 8+ fetch threads: 1 s stalls

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"


def _page(rng: np.random.Generator, urls: list[str]) -> str:
    parts = []
    for url in urls:
        words = " ".join(rng.choice(WORDS, size=12))
        parts.append(f"<p>The {words}. Another sentence about the {rng.choice(WORDS)}.</p><img src='{url}'>")
    return f"<html><body><nav><a href='/'>Home</a></nav><article>{''.join(parts)}</article></body></html>"


def make_corpus(folder: Path, files: int, pages: int, images_per_page: int) -> tuple[list[Path], _Server]:
    """``files`` WARCs of ``pages`` pages each; about 1 image in 10 repeats an earlier one (dedup work)."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    rng = np.random.default_rng(0)
    served: dict[str, bytes] = {}
    server = _Server(served)
    paths = []
    for f in range(files):
        path = folder / f"crawl-{f}.warc.gz"
        with open(path, "wb") as handle:
            writer = WARCWriter(handle, gzip=True)
            for p in range(pages):
                urls = []
                for i in range(images_per_page):
                    seed = (f * pages + p) * images_per_page + i
                    seed = seed // 2 if rng.random() < 0.1 else seed
                    served.setdefault(f"/img{seed}.png", _image(seed))
                    urls.append(f"{server.base}/img{seed}.png")
                headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
                payload = io.BytesIO(_page(rng, urls).encode())
                url = f"http://site{f}.example/{p}"
                writer.write_record(
                    writer.create_warc_record(url, "response", payload=payload, http_headers=headers)
                )
        paths.append(path)
    return paths, server


def bench_config(faces: bool = True) -> BuildConfig:
    return BuildConfig(
        fetch=FetchConfig(threads=8, timeout_s=5.0, retries=0, allow_loopback=True),
        filter=FilterConfig(min_side=64, min_bytes=500, max_faces=1 if faces else 0, nsfw_threshold=1.0),
        interleave=InterleaveConfig(similarity_threshold=-1.0),
        progress=False,
    )


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def stage_rows(inputs: list[Path], work: Path, embedder: ClipEmbedder) -> list[dict]:
    """Each CPU stage alone over all inputs in this process: documents per second on one core."""
    cfg = bench_config()
    docs, t_read = _timed(lambda: [d for p in inputs for d in read_input(p, cfg.read)])
    fetched, t_fetch = _timed(fetch_documents, docs, cfg.fetch, str(work / "stage-out"), "bench", False)
    filtered, t_filter = _timed(lambda: hash_images(filter_images(fetched, cfg.filter)))
    records = hash_records(0, filtered)
    _, t_dedup = _timed(plan_dedup, records, cfg.filter)
    detector = make_face_detector(cfg.filter.face_backend, cfg.filter)
    faced, t_faces = _timed(filter_faces, filtered, cfg.filter, detector)
    embedder.embed_texts(["warm up"])
    _, t_inter = _timed(
        interleave_documents, faced, embedder.embed_images, embedder.embed_texts, cfg.interleave
    )
    n = len(docs)
    rows = [
        ("read + extract (WARC)", t_read),
        ("fetch (127.0.0.1, 8 threads)", t_fetch),
        ("filter rules + hashes", t_filter),
        ("dedup plan (corpus-wide)", t_dedup),
        ("faces (OpenCV Haar)", t_faces),
        ("interleave (tiny CLIP)", t_inter),
    ]
    return [{"stage": name, "documents": n, "seconds": t, "docs_per_s_per_core": n / t} for name, t in rows]


def clip_row(embedder: ClipEmbedder, n: int, size: int) -> dict:
    """Images per second through the CLIP image tower (preprocessing included)."""
    images = [Image.open(io.BytesIO(_image(i, size))).convert("RGB") for i in range(n)]
    embedder.embed_images(images[: embedder.batch_size])  # warm-up
    _, seconds = _timed(embedder.embed_images, images)
    return {
        "stage": f"CLIP images ({embedder.spec.name}, {embedder.towers.device})",
        "images": n,
        "seconds": seconds,
        "images_per_s": n / seconds,
    }


def engine_rows(inputs: list[Path], work: Path, embedder: ClipEmbedder, ray_too: bool) -> list[dict]:
    """The whole pipeline: local engine and Ray Data, 1 and 2 workers (fresh output, so everything is fetched)."""
    rows = []
    runs = [("local", 1), ("local", 2)] + ([("ray", 1), ("ray", 2)] if ray_too else [])
    for engine, workers in runs:
        out = work / f"{engine}-{workers}"
        if engine == "ray":
            _start_ray(workers, embedder)
        try:
            result, seconds = _timed(run_pipeline, inputs, out, bench_config(), engine, workers, embedder)
        finally:
            if engine == "ray":
                import ray

                ray.shutdown()
        n = result.stats.to_dict()["stages"]["read"]["documents_out"]
        rows.append(
            {
                "engine": engine,
                "workers": workers,
                "documents": n,
                "seconds": seconds,
                "docs_per_s": n / seconds,
            }
        )
    return rows


def _start_ray(workers: int, embedder: ClipEmbedder) -> None:
    """A local Ray with ``workers`` CPUs and its worker processes warm (imports done, CLIP loaded), before the
    clock: starting a cluster is not builder work, and a long build pays it once."""
    import ray
    import ray.data  # its first import takes seconds

    env = {"PYTHONPATH": str(ROOT / "src"), **THREAD_ENV}
    ray.init(num_cpus=workers, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)

    @ray.remote(num_cpus=1)
    def warm(spec: object) -> int:
        from flamingo.corpus import engine  # noqa: F401
        from flamingo.corpus.clip import load_towers

        load_towers(spec, "cpu")
        time.sleep(1.0)  # hold the CPU so that each task lands in its own worker process
        return os.getpid()

    ray.get([warm.remote(embedder.spec) for _ in range(workers)])


def print_table(stages: list[dict], clip: dict, engines: list[dict]) -> None:
    print(f"\n{'stage':<34}{'docs':>7}{'seconds':>10}{'docs/s/core':>14}")
    for r in stages:
        print(f"{r['stage']:<34}{r['documents']:>7}{r['seconds']:>10.3f}{r['docs_per_s_per_core']:>14.1f}")
    print(
        f"{clip['stage']:<34}{clip['images']:>7}{clip['seconds']:>10.3f}{clip['images_per_s']:>11.1f} img/s"
    )
    print(f"\n{'engine':<10}{'workers':>8}{'docs':>7}{'seconds':>10}{'docs/s':>10}{'vs 1 worker':>13}")
    base = {r["engine"]: r["docs_per_s"] for r in engines if r["workers"] == 1}
    for r in engines:
        ratio = r["docs_per_s"] / base[r["engine"]]
        print(
            f"{r['engine']:<10}{r['workers']:>8}{r['documents']:>7}{r['seconds']:>10.2f}{r['docs_per_s']:>10.1f}{ratio:>12.2f}x"
        )


# The two documentation sites of the quality run: Debian package, and the folder of its HTML inside the package.
PACKAGES = {
    "debian-handbook": ("debian-handbook", "usr/share/doc/debian-handbook/html"),
    "scikit-image": ("python-skimage-doc", "usr/share/doc/python-skimage-doc/html"),
}
PAGE_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flamingo-bench" / "real-pages"
)


def _debian_sites(cache: Path) -> tuple[Path, list[str]]:
    """A folder holding each site of ``PACKAGES`` (a link into its extracted package, downloaded with
    ``apt-get download`` on first use), and the package files used."""
    sites = cache / "sites"
    debs = []
    for site, (package, folder) in PACKAGES.items():
        extracted = cache / package
        if not (extracted / folder).is_dir():
            cache.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["apt-get", "download", package], cwd=cache, check=True, capture_output=True, timeout=900
            )
            deb = sorted(cache.glob(f"{package}_*.deb"))[-1]
            subprocess.run(
                ["dpkg", "-x", str(deb), str(extracted)], check=True, capture_output=True, timeout=900
            )
        debs += [p.name for p in sorted(cache.glob(f"{package}_*.deb"))[-1:]]
        link = sites / site
        if not link.exists():
            sites.mkdir(parents=True, exist_ok=True)
            link.symlink_to(extracted / folder, target_is_directory=True)
    return sites, debs


def _site_pages(root: Path) -> list[str]:
    """Every page of the handbook (English), and the scikit-image user guide and gallery."""
    pages = [p for p in (root / "debian-handbook" / "en-US").glob("*.html")]
    skimage = root / "scikit-image"
    pages += [*skimage.glob("user_guide/*.html"), *skimage.glob("auto_examples/**/*.html")]
    return sorted(p.relative_to(root).as_posix() for p in pages if p.name != "sg_execution_times.html")


def real_page_set(cache: Path, fixture_only: bool) -> tuple[Path, list[str], str]:
    """The folder of the pages, the pages (``site/...`` paths) and where they come from."""
    if not fixture_only:
        try:
            root, debs = _debian_sites(cache)
        except (OSError, subprocess.SubprocessError) as error:
            print(f"Debian packages unavailable ({error}); using the fixture's pages")
        else:
            return root, _site_pages(root), "Debian packages " + ", ".join(debs)
    return FIXTURE, fixture_pages(), "tests/fixtures/real_pages"


def _builder_units(root: Path, pages: list[str], folder: Path) -> tuple[dict[str, list[str]], float]:
    """The read stage's sentences per page (a WARC of the pages through ``read_input``), and its seconds."""
    warc = folder / "pages.warc.gz"
    urls = write_pages_warc(warc, root, pages, "http://docs.example")
    write_pages_warc(folder / "warm.warc.gz", root, pages[:1], "http://docs.example")
    read_input(folder / "warm.warc.gz", ReadConfig())  # warm-up: the parser's and splitter's first use
    docs, seconds = _timed(read_input, warc, ReadConfig(), ReadCounts())
    units: dict[str, list[str]] = {page: [] for page in pages}  # a dropped page keeps no text
    for doc in docs:
        units[urls[doc.url]] = doc.sentences
    return units, seconds


def _trafilatura_units(html: dict[str, bytes]) -> tuple[dict[str, list[str]], float]:
    """trafilatura's text per page (its defaults), cut into sentences by the builder's splitter."""
    import trafilatura

    def extract_all() -> dict[str, str]:
        return {
            page: trafilatura.extract(raw, url=f"http://docs.example/{page}") or ""
            for page, raw in html.items()
        }

    first = next(iter(html))
    trafilatura.extract(html[first])  # warm-up: its lazy imports
    texts, seconds = _timed(extract_all)
    units = {
        page: [s for line in text.splitlines() for s in split_sentences(line)] for page, text in texts.items()
    }
    return units, seconds


def quality_run(cache: Path, fixture_only: bool, show_missed: bool) -> dict:
    """The builder's and trafilatura's extraction figures on the real pages (see ``extraction_quality``)."""
    import trafilatura

    root, pages, source = real_page_set(cache, fixture_only)
    gold = json.loads((FIXTURE / "gold.json").read_text(encoding="utf-8"))
    html = {page: (root / page).read_bytes() for page in pages}
    text = {page: raw.decode("utf-8", errors="replace") for page, raw in html.items()}
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        builder, builder_s = _builder_units(root, pages, Path(tmp))
    traf, traf_s = _trafilatura_units(html)
    rows = []
    for name, (units, seconds) in (
        ("builder (read stage)", (builder, builder_s)),
        (f"trafilatura {trafilatura.__version__}", (traf, traf_s)),
    ):
        row = {"extractor": name, **extraction_quality.measure(units, text, gold, seconds)}
        missed = row.pop("missed")
        row["missed_sentences"] = len(missed)
        if show_missed:
            print(f"\n{name}: {len(missed)} gold sentences missed")
            for line in missed:
                print("  " + line)
        rows.append(row)
    sites = sorted({page.split("/", 1)[0] for page in pages})
    return {
        "pages_source": source,
        "pages": {site: sum(1 for p in pages if p.startswith(site + "/")) for site in sites},
        "gold_pages": sum(1 for page in gold["prose"] if page in html),
        "rules": {
            "match_share": extraction_quality.MATCH_SHARE,
            "match_slack_chars": extraction_quality.MATCH_SLACK,
            "repeat_pages": extraction_quality.REPEAT_PAGES,
        },
        "extractors": rows,
    }


def print_quality(result: dict) -> None:
    pages = ", ".join(f"{n} {site}" for site, n in result["pages"].items())
    print(f"\npages: {pages} ({result['pages_source']}); gold sample on {result['gold_pages']} pages")
    header = [
        "extractor",
        "prose kept",
        "boilerplate ch",
        "repeated ch",
        "code share",
        "longest",
        "chars",
        "pages/s",
    ]
    print(f"{header[0]:<24}" + "".join(f"{h:>15}" for h in header[1:]))
    for r in result["extractors"]:
        cells = [
            f"{r['prose_kept']:.1%}",
            f"{r['boilerplate_chars']:,}",
            f"{r['repeated_chars']:,}",
            f"{r['code_share']:.1%}",
            f"{r['longest_sentence_chars']:,}",
            f"{r['output_chars']:,}",
            f"{r['pages_per_s']:.1f}",
        ]
        print(f"{r['extractor']:<24}" + "".join(f"{c:>15}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # 480 documents in 8 files: a run long enough that starting worker processes (imports, a Ray cluster's
    # tasks) is not most of it, and enough files to keep two workers busy to the end.
    parser.add_argument("--files", type=int, default=8, help="WARC files (= shards = parallel tasks)")
    parser.add_argument("--pages", type=int, default=60, help="pages per WARC file")
    parser.add_argument("--images-per-page", type=int, default=3)
    parser.add_argument("--clip", help="CLIP spec for the CLIP-stage row (default: tiny random CLIP)")
    parser.add_argument("--clip-images", type=int, default=256)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray rows")
    parser.add_argument(
        "--quality", action="store_true", help="measure text extraction on real pages instead"
    )
    parser.add_argument(
        "--fixture-pages", action="store_true", help="--quality on the fixture's 18 pages only"
    )
    parser.add_argument(
        "--page-cache", default=str(PAGE_CACHE), help="where --quality keeps the Debian packages"
    )
    parser.add_argument(
        "--show-missed", action="store_true", help="--quality: list the gold sentences missed"
    )
    parser.add_argument(
        "--out", help="results file (default bench/results/build_cpu.json or build_quality.json)"
    )
    args = parser.parse_args()
    if args.quality:
        result = quality_run(Path(args.page_cache), args.fixture_pages, args.show_missed)
        print_quality(result)
        out = args.out or str(ROOT / "bench" / "results" / "build_quality.json")
        results_log.record(out, result)
        print(f"\nwrote {out}")
        return
    args.out = args.out or str(ROOT / "bench" / "results" / "build_cpu.json")
    tiny = tiny_clip_embedder(device="cpu")
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        work = Path(tmp)
        inputs, _server = make_corpus(work, args.files, args.pages, args.images_per_page)
        stages = stage_rows(inputs, work, tiny)
        clip = clip_row(ClipEmbedder(args.clip) if args.clip else tiny, args.clip_images, 224)
        engines = engine_rows(inputs, work, tiny, not args.no_ray)
    print_table(stages, clip, engines)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "corpus": {
            "files": args.files,
            "pages_per_file": args.pages,
            "images_per_page": args.images_per_page,
        },
        "stages": stages,
        "clip": clip,
        "engines": engines,
    }
    gpu = None
    if clip["stage"].endswith("cuda)"):  # the CLIP row ran on a GPU
        import torch

        gpu = torch.cuda.get_device_name()
    results_log.record(args.out, result, gpu=gpu)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
