"""Shards on object storage, web servers and pipes: a real S3 API (moto) and an HTTP server on 127.0.0.1,
``pipe:cat``; listing, reading, training, retries after cut transfers, the data commands and the builder."""

from __future__ import annotations

import errno
import functools
import http.server
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import s3fs
from data_support import flamingo_data, no_pixels
from moto.server import ThreadedMotoServer
from PIL import Image

from flamingo.configs import ConfigError
from flamingo.data.loader import SourceConfig, SourceDataset
from flamingo.data.paths import expand_paths
from flamingo.data.remote import RemoteError, RetryPolicy, filesystem, is_transient, is_url
from flamingo.data.shards import ReadStats, read_interleaved, read_pairs
from flamingo.data.synthetic import synthetic_documents, write_synthetic_interleaved, write_synthetic_pairs

ROOT = Path(__file__).resolve().parents[2]
NO_WAIT = RetryPolicy(retries=2, backoff=0.0)


# ----------------------------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def local_shards(tmp_path_factory) -> dict[str, list[Path]]:
    """Synthetic interleaved documents (3 shards of 6) and pairs (2 shards of 8) on local disk."""
    root = tmp_path_factory.mktemp("local")
    return {
        "interleaved": write_synthetic_interleaved(root, 18, seed=3, max_samples_per_shard=6),
        "pairs": write_synthetic_pairs(root, 16, seed=3, max_samples_per_shard=8),
    }


@pytest.fixture(scope="module")
def s3(local_shards) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 holding the local shards under ``s3://shards/data/``; s3fs finds it
    through ``AWS_ENDPOINT_URL`` and fake credentials in the environment, as a user's setup would."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        fs.mkdir("shards")
        for path in [*local_shards["interleaved"], *local_shards["pairs"]]:
            fs.put_file(str(path), f"shards/data/{path.name}")
        yield "s3://shards"
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


class _ShardHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder. ``/cut-once/N/NAME`` sends only N bytes of NAME on its first GET (then closes the
    connection; later GETs get it whole), ``/cut-always/N/NAME`` on every GET. Every GET is recorded."""

    def log_message(self, *args: object) -> None:
        pass

    def _parts(self) -> list[str]:
        return self.path.strip("/").split("/")

    def translate_path(self, path: str) -> str:
        parts = path.strip("/").split("/")
        if parts[0] in ("cut-once", "cut-always"):
            path = "/" + parts[2]
        return super().translate_path(path)

    def do_GET(self) -> None:
        gets = self.server.gets  # type: ignore[attr-defined]
        gets.append(self.path)
        parts = self._parts()
        if parts[0] not in ("cut-once", "cut-always"):
            super().do_GET()
            return
        data = Path(self.translate_path(self.path)).read_bytes()
        cut = parts[0] == "cut-always" or gets.count(self.path) == 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: int(parts[1])] if cut else data)  # HTTP/1.0: the connection closes after


@pytest.fixture(scope="module")
def web(local_shards) -> Iterator[http.server.ThreadingHTTPServer]:
    """An HTTP server on 127.0.0.1 serving the local shards' folder (``server.base``, ``server.gets``)."""
    folder = local_shards["interleaved"][0].parent
    handler = functools.partial(_ShardHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.base = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    server.gets = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _keys(documents) -> list[str]:
    return [getattr(d, "id", None) or d.key for d in documents]


# ----------------------------------------------------------------------------------------------- listing


def test_urls_are_recognised_and_braces_globs_and_folders_expand_on_the_store(s3, web) -> None:
    assert all(is_url(u) for u in ("s3://b/k", "gs://b/k", "https://h/x.tar", "pipe:cat x.tar"))
    assert not any(is_url(u) for u in ("shards/x.tar", "/abs/x.tar", Path("s3:/b"), "file:///x.tar"))
    names = [f"interleaved-00000{i}.tar" for i in range(3)]
    listed = [f"{s3}/data/{name}" for name in names]
    assert expand_paths(f"{s3}/data/interleaved-{{000000..000002}}.tar") == listed  # braces, not listed
    assert expand_paths(f"{s3}/data/interleaved-*.tar") == listed  # a glob, listed by the store
    assert expand_paths(f"{s3}/data/") == sorted(
        [*listed, f"{s3}/data/pairs-000000.tar", f"{s3}/data/pairs-000001.tar"]
    )
    assert expand_paths(f"{web.base}/x-{{0..1}}.tar?sig=a*b") == [  # web URLs: no glob ('?' is a query)
        f"{web.base}/x-0.tar?sig=a*b",
        f"{web.base}/x-1.tar?sig=a*b",
    ]
    assert expand_paths("pipe:cat s-{0,1}.tar") == ["pipe:cat s-0.tar", "pipe:cat s-1.tar"]
    assert expand_paths(f"{s3}/data/nothing-*.tar") == []


def test_gcs_without_its_package_fails_with_a_line_naming_it() -> None:
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(
            RemoteError,
            match=r"gs://bucket/x.tar: reading gs:// needs the package 'gcsfs'.*pip install gcsfs",
        ):
            filesystem("gs://bucket/x.tar")
    else:
        pytest.skip("gcsfs is installed here")
    with pytest.raises(RemoteError, match="ftp:// is not supported"):
        filesystem("ftp://host/x.tar")


# ----------------------------------------------------------------------------------------------- reading


def test_s3_http_and_pipe_shards_read_as_the_local_files(s3, web, local_shards) -> None:
    local = local_shards["interleaved"]
    expected = list(read_interleaved(local))
    assert _keys(expected) == [d.id for d in synthetic_documents(18, seed=3)]
    sources = {
        "s3": f"{s3}/data/interleaved-{{000000..000002}}.tar",
        "http": [f"{web.base}/{p.name}" for p in local],
        "pipe": [f"pipe:cat {p}" for p in local],
    }
    for name, spec in sources.items():
        stats = ReadStats()
        read = list(read_interleaved(spec, stats=stats))
        assert read == expected, name
        assert [d.images[0].data for d in read] == [d.images[0].data for d in expected], name
        assert (stats.files, stats.samples, stats.total_skipped) == (3, 18, 0), name
    pairs = list(read_pairs(f"{s3}/data/pairs-*.tar"))
    assert _keys(pairs) == _keys(read_pairs(local_shards["pairs"])) and len(pairs) == 16


def test_missing_remote_shards_count_as_missing_files(s3, web) -> None:
    stats = ReadStats()
    assert list(read_interleaved([f"{s3}/data/absent.tar", f"{web.base}/absent.tar"], stats=stats)) == []
    assert stats.skipped == {"missing_file": 2}


# ----------------------------------------------------------------------------------------------- failures


def test_is_transient_retries_transfers_and_servers_not_missing_or_forbidden_objects() -> None:
    def chained(error: BaseException, cause: BaseException) -> BaseException:
        error.__cause__ = cause
        return error

    def response(status: int) -> aiohttp.ClientResponseError:
        return aiohttp.ClientResponseError(None, (), status=status)  # type: ignore[arg-type]

    transient = [
        ConnectionResetError(),
        TimeoutError(),
        aiohttp.ClientPayloadError("Response payload is not completed"),
        response(503),
        response(429),
        OSError(errno.EIO, "the store failed"),
        chained(FileNotFoundError("http://h/x"), ConnectionRefusedError()),  # fsspec's "not found"
    ]
    final = [
        FileNotFoundError("x"),
        PermissionError("denied"),
        response(404),
        response(403),
        ValueError("bad"),
    ]
    assert [is_transient(e) for e in transient] == [True] * len(transient)
    assert [is_transient(e) for e in final] == [False] * len(final)
    assert [RetryPolicy(3, 0.5).delay(i) for i in range(3)] == [0.5, 1.0, 2.0]


def test_a_cut_transfer_is_retried_and_resumes_without_repeating_or_losing_a_sample(
    web, local_shards
) -> None:
    shard = local_shards["interleaved"][1]
    expected = list(read_interleaved(shard))
    size = shard.stat().st_size
    for cut in (700, size // 2, size - 600):  # in the first sample, mid-shard, in the last sample
        url = f"{web.base}/cut-once/{cut}/{shard.name}"
        stats = ReadStats()
        read = list(read_interleaved(url, stats=stats, retry=NO_WAIT))
        assert read == expected, cut
        assert (stats.files, stats.samples, dict(stats.skipped)) == (1, 6, {}), cut
        assert web.gets.count(f"/cut-once/{cut}/{shard.name}") == 2, cut


def test_a_failed_pipe_command_is_retried_until_it_succeeds(tmp_path, local_shards) -> None:
    shard = local_shards["pairs"][0]
    marker = tmp_path / "tried"
    # The first run sends half the shard and fails; the second (the marker exists) sends it whole.
    command = (
        f"if [ -e {marker} ]; then cat {shard}; "
        f"else touch {marker}; head -c {shard.stat().st_size // 2} {shard}; exit 3; fi"
    )
    stats = ReadStats()
    read = list(read_pairs(f"pipe:{command}", stats=stats, retry=NO_WAIT))
    assert _keys(read) == _keys(read_pairs(shard)) and stats.skipped == {}
    assert marker.exists()


def test_a_shard_that_keeps_failing_is_skipped_counted_and_warned_about_once(
    web, local_shards, caplog
) -> None:
    shard = local_shards["interleaved"][2]
    expected = list(read_interleaved(shard))
    cut = shard.stat().st_size // 2
    url = f"{web.base}/cut-always/{cut}/{shard.name}"
    stats = ReadStats()
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="flamingo.data"):
        read = list(read_interleaved(url, stats=stats, retry=RetryPolicy(retries=2, backoff=0.05)))
    assert time.perf_counter() - started >= 0.05 + 0.1  # the two waits, doubling
    assert web.gets.count(f"/cut-always/{cut}/{shard.name}") == 3  # the first try and two retries
    # aiohttp drops what it buffered when it finds the response short, so how many samples came before the
    # cut depends on timing; those that came are whole and in order.
    assert len(read) < len(expected) and read == expected[: len(read)]
    assert stats.skipped == {"read_failed": 1} and stats.samples == len(read)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and url in warnings[0] and "read_failed=1" in warnings[0]
    assert "gave up after 3 tries" in warnings[0]
    # A pipe hands over every byte before its failure: the samples wholly before the cut are kept, each once,
    # and the one being read at the cut is not passed on half-read.
    pipe = f"pipe:head -c {cut} {shard}; exit 1"
    stats = ReadStats()
    read = list(read_interleaved([pipe, f"{web.base}/{shard.name}"], stats=stats, retry=NO_WAIT))
    before = len(read) - len(expected)
    assert 0 < before < len(expected) and read == expected[:before] + expected  # the good shard after it too
    assert stats.skipped == {"read_failed": 1} and stats.files == 2


# ----------------------------------------------------------------------------------------------- loader


def _source(shards: list[str], **fields: object) -> SourceConfig:
    defaults = {
        "max_tokens": 48,
        "min_image_bytes": 0,
        "shuffle_block": 4,
        "batch_size": 2,
        "retry_backoff": 0.0,
    }
    return SourceConfig(name="interleaved", kind="interleaved", shards=shards, **{**defaults, **fields})


def _dataset(tiny_tokenizer, source: SourceConfig) -> SourceDataset:
    tokens = tiny_tokenizer.convert_tokens_to_ids(["<image>", "<|endofchunk|>"])
    return SourceDataset(source, tiny_tokenizer, no_pixels, tokens[0], tokens[1], seed=5)


def _take(dataset: SourceDataset, n: int) -> list[tuple[list[int], dict]]:
    out = []
    for sample, state in dataset:
        out.append((sample.input_ids.tolist(), state))
        if len(out) == n:
            return out
    raise AssertionError("unreachable: the loader is endless")


def test_the_loader_streams_remote_shards_like_local_ones_and_resumes_exactly(
    s3, web, local_shards, tiny_tokenizer
) -> None:
    local = [str(p) for p in local_shards["interleaved"]]
    reference = _take(_dataset(tiny_tokenizer, _source(local)), 24)  # more than an epoch
    # The middle shard comes through a connection cut on its first GET: the retry is invisible to the stream.
    cut = local_shards["interleaved"][1].stat().st_size // 3
    remote = [
        f"{s3}/data/{Path(local[0]).name}",
        f"{web.base}/cut-once/{cut}/{Path(local[1]).name}",
        f"pipe:cat {local[2]}",
    ]
    streamed = _take(_dataset(tiny_tokenizer, _source(remote)), 24)
    assert [ids for ids, _ in streamed] == [ids for ids, _ in reference]
    assert streamed[-1][1]["read_stats"]["skipped"] == {}
    for stop in (5, 13):  # mid-shard in the first epoch, and in the second
        resumed = _dataset(tiny_tokenizer, _source(remote))
        resumed.load_state_dict(streamed[stop - 1][1])
        assert [ids for ids, _ in _take(resumed, 24 - stop)] == [ids for ids, _ in reference[stop:]]


def test_a_forked_data_worker_reads_remote_shards_after_the_parent_has(
    s3, web, local_shards, tiny_tokenizer
) -> None:
    from flamingo.data.loader import SourceLoader

    names = [p.name for p in local_shards["interleaved"]]
    local = _dataset(tiny_tokenizer, _source([str(p) for p in local_shards["interleaved"]]))
    remote = [f"{s3}/data/{names[0]}", f"{web.base}/{names[1]}", f"{s3}/data/{names[2]}"]
    assert len(list(read_interleaved(remote[:2]))) == 12  # the parent's s3fs and HTTP sessions exist now
    pad = tiny_tokenizer.pad_token_id
    loaders = [
        SourceLoader(local, pad, prefetch=0),
        SourceLoader(_dataset(tiny_tokenizer, _source(remote)), pad, 2, "process"),
    ]
    try:
        batches = [[loader.next_batch().input_ids.tolist() for _ in range(6)] for loader in loaders]
    finally:
        for loader in loaders:
            loader.close()
    assert batches[1] == batches[0]
    assert loaders[1].state_dict()["position"] == loaders[0].state_dict()["position"]


def test_retries_are_bounded_by_the_strict_config_loader() -> None:
    from flamingo.train.config import load_config

    preset = ROOT / "configs" / "train" / "tiny-cpu.yaml"
    config = load_config(preset, ["data.sources.0.retries=7", "data.sources.0.retry_backoff=0.5"])
    assert (config.data.sources[0].retries, config.data.sources[0].retry_backoff) == (7, 0.5)
    with pytest.raises(ConfigError, match="retries"):
        load_config(preset, ["data.sources.0.retries=101"])
    with pytest.raises(ConfigError, match="retry_backoff"):
        load_config(preset, ["data.sources.0.retry_backoff=-1"])


# ----------------------------------------------------------------------------------------------- training


@pytest.mark.slow
def test_training_from_s3_http_and_pipe_gives_the_losses_of_the_local_shard(
    s3, web, local_shards, tmp_path
) -> None:
    from flamingo.cli import main
    from flamingo.train.metrics import read_metrics

    # One run, four sources holding the same shard: with one shard and shuffle_block 1 their orders agree, so
    # every step gives each source the same batch, and its loss (on the same weights) must be the same.
    shard = local_shards["pairs"][0]
    sources = {
        "local": str(shard),
        "s3": f"{s3}/data/pairs-00000[0].tar",
        "http": f"{web.base}/{shard.name}",
        "pipe": f"pipe:cat {shard}",
    }
    listed = ", ".join(
        f"{{name: {name}, kind: pairs, batch_size: 4, shuffle_block: 1, shards: ['{url}']}}"
        for name, url in sources.items()
    )
    overrides = [
        f"run_dir={tmp_path}",
        "logging.progress=false",
        "data.synthetic=false",
        f"data.sources=[{listed}]",
    ]
    overrides += ["train.steps=3", "checkpoint.every=0", "data.worker=thread"]
    assert main(["train", "--config", str(ROOT / "configs" / "train" / "tiny-cpu.yaml"), *overrides]) == 0
    records = read_metrics(tmp_path)
    assert sorted(records) == [1, 2, 3]  # 12 pairs from a shard of 8: the second epoch is read too
    for record in records.values():
        assert record["loss/s3"] == record["loss/http"] == record["loss/pipe"] == record["loss/local"]
    assert len({record["loss/local"] for record in records.values()}) == 3  # three different batches


# ----------------------------------------------------------------------------------------------- commands


def test_data_validate_stats_and_show_read_s3_and_http_urls(s3, web, local_shards, tmp_path, capsys) -> None:
    from flamingo.cli import main

    name = local_shards["interleaved"][0].name
    for url in (f"{s3}/data/{name}", f"{web.base}/{name}"):
        report = tmp_path / "report.json"
        assert flamingo_data("validate", url, "--json", str(report)) == 0
        assert "OK: 1 file(s), 6 sample(s), 6 usable" in capsys.readouterr().out
        assert json.loads(report.read_text())["files"] == [url]
        assert flamingo_data("stats", url) == 0
        stats = json.loads(capsys.readouterr().out)
        assert (stats["files"], stats["documents"], stats["skipped"]) == (1, 6, {})
        page = tmp_path / "doc.html"
        assert main(["data", "show", url, "--doc", "2", "--out", str(page)]) == 0
        assert "document doc000002" in page.read_text()
    failing = f"{web.base}/cut-always/900/{name}"
    assert flamingo_data("validate", failing, "--retries", "1", "--retry-backoff", "0") == 1
    assert "read_failed=1" in capsys.readouterr().out and web.gets.count(failing.split(web.base)[1]) == 2
    assert main(["data", "show", f"{s3}/data/absent.tar", "--out", str(tmp_path / "x.html")]) == 1


# ----------------------------------------------------------------------------------------------- builder


_COLOUR_WORDS = {"red": (1.0, -0.5, -0.5), "blue": (-0.5, -0.5, 1.0), "green": (-0.5, 1.0, -0.5)}


class _ColourEmbedder:
    """A stand-in for CLIP: images by their mean colour direction, texts by the colour words they hold."""

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        means = np.stack([np.asarray(im.convert("RGB"), dtype=np.float64).mean(axis=(0, 1)) for im in images])
        return means - means.mean(axis=1, keepdims=True)  # (n, 3)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 3))  # (n, 3)
        for i, text in enumerate(texts):
            for word in text.lower().replace(".", " ").split():
                out[i] += _COLOUR_WORDS.get(word, (0.0, 0.0, 0.0))
        return out


def _textured(colour: tuple[int, int, int], seed: int) -> bytes:
    import io

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.integers(-40, 40, size=(96, 96, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_builder_writes_its_shards_to_s3_and_they_read_back(s3, tmp_path, monkeypatch) -> None:
    import tempfile

    from flamingo.corpus import BuildConfig, run_pipeline
    from flamingo.corpus.config import FetchConfig, FilterConfig

    images = tmp_path / "images"
    images.mkdir()
    (images / "red.png").write_bytes(_textured((220, 30, 30), 1))
    (images / "blue.png").write_bytes(_textured((30, 30, 220), 2))
    pages = [
        {
            "id": "p0",
            "url": "http://site.example/0",
            "text": "A red car drives by. The blue sea.",
            "images": ["red.png", "blue.png"],
        },
        {
            "id": "p1",
            "url": "http://site.example/1",
            "text": "A blue door. Nothing else.",
            "images": ["blue.png"],
        },
    ]
    jsonl = tmp_path / "pages.jsonl"
    jsonl.write_text("".join(json.dumps(page) + "\n" for page in pages))
    config = BuildConfig(
        fetch=FetchConfig(local_root=str(images)),
        filter=FilterConfig(
            min_side=64,
            min_bytes=200,
            max_faces=0,
            nsfw_threshold=1.0,
            dedup_exact=False,
            dedup_perceptual=False,
        ),
        progress=False,
    )
    out = f"{s3}/built"
    fs, _ = filesystem(out)
    fs.pipe_file("shards/built/shards/shard-00000-000007.tar", b"left by an earlier build")
    staged: list[str] = []
    mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: staged.append(mkdtemp(**kw)) or staged[-1])
    result = run_pipeline([jsonl], out, config, embedder=_ColourEmbedder())
    assert result.shard_paths == [f"{out}/shards/shard-00000-000000.tar"]
    assert sorted(fs.find("shards/built")) == [
        "shards/built/config.json",
        "shards/built/report.md",
        "shards/built/shards/shard-00000-000000.tar",  # the stale tar of this input is gone
        "shards/built/stats.json",
    ]
    assert len(staged) == 1 and not os.path.exists(staged[0])  # the local work folder is removed
    documents = list(read_interleaved(f"{out}/shards/"))
    assert [d.url for d in documents] == ["http://site.example/0", "http://site.example/1"]
    assert [len(d.images) for d in documents] == [2, 1]
    assert documents[0].images[0].data == (images / "red.png").read_bytes()
    stats = json.loads(fs.cat_file("shards/built/stats.json"))
    assert stats["stages"]["write"]["documents_out"] == 2
