"""End to end: WARC and JSONL corpora served from 127.0.0.1, stats, resume, hostile inputs, local vs Ray."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from corpus_fakes import (
    ColourEmbedder,
    ImageServer,
    check_stage_accounting,
    encode,
    page,
    png_bomb,
    small_config,
    textured,
    write_warc,
)

import flamingo.corpus.engine as engine_module
from flamingo.corpus import BuildConfig, run_pipeline
from flamingo.corpus.stats import BuildStats
from flamingo.data.shards import ReadStats, read_interleaved

STAGE_ORDER = ["read", "fetch", "filter", "dedup", "faces", "nsfw", "interleave", "write"]


def _corpus(server: ImageServer, folder: Path) -> list[Path]:
    """Two WARC files, four pages; see the expected outcome in test_end_to_end_warc_build."""
    red = encode(textured("red", 1))
    blue = textured("blue", 2)
    add = server.add
    page1 = page(
        "Cars",
        ["A red car drives by.", "The blue sea is calm."],
        [add("/r1.png", red), add("/b1.png", encode(blue))],
    )
    page2 = page(
        "Fields",
        ["Green fields everywhere.", "A yellow sun rises.", "More.", "Even more.", "The end."],
        [
            add("/g2.png", encode(textured("green", 3))),
            server.base + "/missing.png",
            server.base + "/slow/g2.png",
            add("/sun.png", encode(textured("yellow", 4), "JPEG", quality=90), content_type="text/html"),
            add("/corrupt.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 500, content_type="image/jpeg"),
        ],
    )
    copy = encode(blue.resize((120, 120)), "JPEG", quality=80)
    page3 = page(
        "Copies",
        ["Another red car.", "Blue water again.", "A green leaf."],
        [
            add("/r1-copy.png", red),
            add("/b1-small.jpg", copy, "image/jpeg"),
            add("/leaf.png", encode(textured("green", 9))),
        ],
    )
    page4 = page("Lost", ["A red house."], [server.base + "/missing2.png"])
    return [
        write_warc(
            folder / "crawl-0.warc.gz",
            [("http://site.example/cars", page1), ("http://site.example/fields", page2)],
        ),
        write_warc(
            folder / "crawl-1.warc.gz",
            [("http://site.example/copies", page3), ("http://site.example/lost", page4)],
        ),
    ]


def _read_shards(out: Path) -> list[dict]:
    docs = list(read_interleaved(sorted((out / "shards").glob("*.tar")), stats=ReadStats()))
    return [{**d.to_dict(), "images": [im.data for im in d.images]} for d in docs]


def _check_stats_add_up(stats: dict) -> None:
    stages = stats["stages"]
    assert set(STAGE_ORDER) <= set(stages)
    check_stage_accounting(stages)
    assert sum(stats["images_per_document"].values()) == stages["write"]["documents_out"]
    assert sum(int(k) * v for k, v in stats["images_per_document"].items()) == stages["write"]["images_out"]


def test_end_to_end_warc_build(image_server, tmp_path) -> None:
    inputs = _corpus(image_server, tmp_path)
    out = tmp_path / "out"
    result = run_pipeline(inputs, out, small_config(), embedder=ColourEmbedder())
    docs = _read_shards(out)
    assert [d["url"] for d in docs] == [
        "http://site.example/cars",
        "http://site.example/fields",
        "http://site.example/copies",
    ]
    cars, fields, copies = docs
    assert [cars["text_list"][i["matched_text_index"]] for i in cars["image_info"]] == [
        "A red car drives by.",
        "The blue sea is calm.",
    ]
    assert [i["raw_url"].rsplit("/", 1)[1] for i in fields["image_info"]] == ["g2.png", "sun.png"]
    assert (
        fields["image_info"][1]["member"] == "1.jpg"
    )  # sniffed JPEG, whatever the URL and Content-Type said
    assert [i["raw_url"].rsplit("/", 1)[1] for i in copies["image_info"]] == ["leaf.png"]
    assert copies["source"] == "crawl-1.warc.gz"

    stats = json.loads((out / "stats.json").read_text())
    assert stats == result.stats.to_dict()
    _check_stats_add_up(stats)
    stages = stats["stages"]
    assert stages["read"]["documents_out"] == 4 and stages["read"]["images_out"] == 11
    assert stages["fetch"]["images_dropped"] == {"decode_error": 1, "http_404": 2, "timeout": 1}
    assert stages["dedup"]["images_dropped"] == {"duplicate_exact": 1, "duplicate_perceptual": 1}
    assert stages["interleave"]["documents_dropped"] == {"no_image_left": 1}
    assert stats["images_per_document"] == {"1": 1, "2": 2}
    report = (out / "report.md").read_text()
    assert "| dedup | images | duplicate_perceptual | 1 |" in report
    assert json.loads((out / "config.json").read_text()) == small_config().to_dict()


def test_interrupted_build_resumes_without_refetching(image_server, tmp_path, monkeypatch) -> None:
    inputs = _corpus(image_server, tmp_path)
    out = tmp_path / "out"
    real_fetch = engine_module.fetch_documents

    def crash_on_second_input(docs, config, out_dir, shard, progress):
        if shard == "shard-00001":
            raise KeyboardInterrupt("simulated interruption after the first input file")
        return real_fetch(docs, config, out_dir, shard, progress)

    monkeypatch.setattr(engine_module, "fetch_documents", crash_on_second_input)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(inputs, out, small_config(), embedder=ColourEmbedder())
    first_hits = dict(image_server.hits)
    assert first_hits["/r1.png"] == 1 and first_hits["/slow/g2.png"] == 2 and "/leaf.png" not in first_hits
    monkeypatch.setattr(engine_module, "fetch_documents", real_fetch)
    run_pipeline(inputs, out, small_config(), embedder=ColourEmbedder())
    for path, n in first_hits.items():
        assert image_server.hits[path] == n, path  # nothing of the first file was fetched again
    assert image_server.hits["/leaf.png"] == 1 and image_server.hits["/missing2.png"] == 1
    assert len(_read_shards(out)) == 3


def test_hostile_jsonl_corpus_finishes_with_reasons(image_server, tmp_path) -> None:
    root = tmp_path / "local"
    root.mkdir()
    (root / "ok.png").write_bytes(encode(textured("red", 20)))
    (tmp_path / "secret.png").write_bytes(encode(textured("red", 21)))
    s = image_server
    images = [
        s.add("/bomb.png", png_bomb()),
        s.base + "/redirect-to/http__10.0.0.1/x.png",
        s.add("/zero.jpg", b"", "image/jpeg"),
        s.base + "/liar/good.png",
        s.add("/good.png", encode(textured("blue", 22))),
        "../secret.png",
        "ok.png",
        "http://[::1]:1/x.png",  # loopback is allowed in tests, but nothing listens there: connection_error
    ]
    doc = {
        "id": "h",
        "url": "http://evil.example/",
        "text": "A red thing. A blue thing. Other text.",
        "images": images,
    }
    jsonl = tmp_path / "hostile.jsonl"
    jsonl.write_text(json.dumps(doc) + "\n")
    config = small_config()
    config.fetch.local_root = str(root)
    config.fetch.max_pixels = 10_000_000
    out = tmp_path / "out"
    run_pipeline([jsonl], out, config, embedder=ColourEmbedder())
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"]["fetch"]["images_dropped"] == {
        "body_exceeds_content_length": 1,
        "connection_error": 1,
        "decompression_bomb": 1,
        "empty": 1,
        "outside_local_root": 1,
        "refused_address": 1,
    }
    (written,) = _read_shards(out)
    assert sorted(i["raw_url"].rsplit("/", 1)[-1] for i in written["image_info"]) == ["good.png", "ok.png"]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert all(p.resolve().is_relative_to(out.resolve()) for p in files)
    manifest = [
        json.loads(line) for line in (out / "manifests" / "shard-00000.jsonl").read_text().splitlines()
    ]
    assert {e["url"]: e.get("reason") for e in manifest}["../secret.png"] == "outside_local_root"


def test_config_roundtrip_and_errors(tmp_path) -> None:
    config = small_config()
    assert BuildConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match=r"interleave.no_image_policy is 'skip'; use drop or keep_text"):
        BuildConfig.from_dict({"interleave": {"no_image_policy": "skip"}})
    with pytest.raises(
        ValueError, match=r"field 'filter\.min_widht': unknown field; did you mean 'min_side'"
    ):
        BuildConfig.from_dict({"filter": {"min_widht": 3}})
    with pytest.raises(FileNotFoundError, match=r"x\.jsonl does not exist"):
        run_pipeline([tmp_path / "x.jsonl"], tmp_path, config)
    (tmp_path / "x.jsonl").write_text("")
    with pytest.raises(ValueError, match="embedder must have embed_images"):
        run_pipeline([tmp_path / "x.jsonl"], tmp_path, config)
    stats = BuildStats()
    stats.merge(BuildStats.from_dict({"shards": 1, "stages": {"read": {"documents_out": 2}}}))
    assert stats.to_dict()["stages"]["read"]["documents_out"] == 2


@pytest.mark.slow
def test_local_and_ray_engines_give_the_same_shards(image_server, tmp_path) -> None:
    ray = pytest.importorskip("ray")
    inputs = _corpus(image_server, tmp_path)
    run_pipeline(
        inputs, tmp_path / "local", small_config(), engine="local", workers=2, embedder=ColourEmbedder()
    )
    here = Path(__file__).resolve().parent
    paths = os.pathsep.join([str(here.parents[1] / "src"), str(here)])
    ray.init(
        num_cpus=1,
        include_dashboard=False,
        object_store_memory=200 * 2**20,
        runtime_env={"env_vars": {"PYTHONPATH": paths}},
    )
    try:
        run_pipeline(
            inputs, tmp_path / "ray", small_config(), engine="ray", workers=1, embedder=ColourEmbedder()
        )
    finally:
        ray.shutdown()
    local_tars = sorted((tmp_path / "local" / "shards").glob("*.tar"))
    ray_tars = sorted((tmp_path / "ray" / "shards").glob("*.tar"))
    assert [p.name for p in local_tars] == [p.name for p in ray_tars] and len(local_tars) == 2
    assert _read_shards(tmp_path / "local") == _read_shards(tmp_path / "ray")
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(local_tars, ray_tars))  # byte-identical
    local_stats, ray_stats = (json.loads((tmp_path / e / "stats.json").read_text()) for e in ("local", "ray"))
    for stats in (local_stats, ray_stats):  # every stage is timed; times differ from run to run
        seconds = [stage.pop("seconds") for stage in stats["stages"].values()]
        assert len(seconds) == len(stats["stages"]) and all(s >= 0 for s in seconds) and sum(seconds) > 0
    assert local_stats == ray_stats


def test_dedup_keeps_the_first_copy_when_ids_repeat_across_inputs(tmp_path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    (root / "red.png").write_bytes(encode(textured("red", 30)))
    (root / "blue.png").write_bytes(encode(textured("blue", 31)))
    inputs = []
    for n, images in enumerate([["red.png"], ["red.png", "blue.png"]]):
        path = tmp_path / f"part-{n}.jsonl"
        path.write_text(
            json.dumps({"id": "same", "text": "A red kite. A blue kite.", "images": images}) + "\n"
        )
        inputs.append(path)
    config = small_config()
    config.fetch.local_root = str(root)
    docs = run_pipeline(inputs, tmp_path / "out", config, embedder=ColourEmbedder()).stats.to_dict()
    assert docs["stages"]["dedup"]["images_dropped"] == {"duplicate_exact": 1}
    first, second = _read_shards(tmp_path / "out")
    assert [i["raw_url"] for i in first["image_info"]] == ["red.png"]  # the first copy is kept
    assert [i["raw_url"] for i in second["image_info"]] == ["blue.png"]
