"""``flamingo data build`` and ``show`` through ``register_data_commands`` (a parser built here)."""

from __future__ import annotations

import argparse
import base64
import json
import re

import pytest
import torch
import yaml
from corpus_fakes import encode, page, textured, write_warc

from flamingo.corpus.cli import register_data_commands
from flamingo.corpus.clip import TINY_CLIP_CONFIG, ClipEmbedder, tiny_clip_embedder
from flamingo.data.schema import ImageInfo, InterleavedDocument
from flamingo.data.shards import InterleavedShardWriter, ReadStats, read_interleaved
from flamingo.data.synthetic import encode_image
from flamingo.data.validate import validate_shards


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="flamingo data")
    register_data_commands(parser.add_subparsers(dest="data_command"))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def _tiny_clip_files(folder) -> tuple[str, ClipEmbedder]:
    """A tiny open_clip config JSON + weights file, and an embedder loaded the same way as the CLI does."""
    config = folder / "tiny-cli-clip.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    weights = folder / "tiny-cli-clip.pt"
    torch.save(tiny_clip_embedder(seed=7).towers.model.state_dict(), weights)
    spec = f"open_clip:{config}:{weights}"
    return spec, ClipEmbedder(spec, device="cpu")


def test_build_command_end_to_end(image_server, tmp_path, capsys) -> None:
    add = image_server.add
    pictures = {name: textured(colour, i) for i, (name, colour) in enumerate([("r", "red"), ("b", "blue")])}
    urls = [add(f"/{name}.png", encode(picture)) for name, picture in pictures.items()]
    pages = [
        ("http://site.example/a", page("A", ["A red car drives by.", "The blue sea is calm."], urls)),
        (
            "http://site.example/b",
            page("B", ["Nothing to see.", "Only text."], [image_server.base + "/gone"]),
        ),
    ]
    warc = write_warc(tmp_path / "crawl.warc.gz", pages)
    config = {
        "filter": {"min_side": 64, "min_bytes": 200, "max_faces": 0, "nsfw_threshold": 1.0},
        "interleave": {"similarity_threshold": -1.0},  # random CLIP: keep every one-to-one pair
        "fetch": {"timeout_s": 2.0, "retries": 0},
        # pages of a few words: any language, no text quality rules
        "text": {"languages": [], "gopher_quality": False, "gopher_repetition": False, "c4": False},
    }
    (tmp_path / "build.yaml").write_text(yaml.safe_dump(config))
    spec, embedder = _tiny_clip_files(tmp_path)
    out = tmp_path / "out"
    code = run_cli(
        "build", warc, "--out", out, "--clip", spec, "--config", tmp_path / "build.yaml",
        "--allow-loopback", "--device", "cpu", "--no-progress",
    )  # fmt: skip
    assert code == 0
    summary = capsys.readouterr().out
    assert "built 1 documents with 2 images" in summary and str(out / "stats.json") in summary
    report = validate_shards(out / "shards")
    assert report.ok and report.documents == 1 and report.images == 2
    (doc,) = read_interleaved(out / "shards", stats=ReadStats())
    assert doc.url == "http://site.example/a"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"]["fetch"]["images_dropped"] == {"http_404": 1}
    # The stored similarities come from the CLIP named by --clip (its weights file, not a random init).
    texts = embedder.embed_texts(doc.text_list)
    for info in doc.image_info:
        image = embedder.embed_images([pictures[info.raw_url.rsplit("/", 1)[1][0]]])[0]
        assert info.matched_sim == pytest.approx(float(image @ texts[info.matched_text_index]), abs=1e-4)
    assert json.loads((out / "config.json").read_text())["interleave"]["similarity_threshold"] == -1.0


def test_build_command_errors(tmp_path) -> None:
    (tmp_path / "x.jsonl").write_text("")
    with pytest.raises(ValueError, match="use open_clip:NAME:PRETRAINED"):
        run_cli("build", tmp_path / "x.jsonl", "--out", tmp_path / "o", "--clip", "vit")
    with pytest.raises(FileNotFoundError, match=r"--config nope\.yaml: no such file"):
        run_cli("build", tmp_path / "x.jsonl", "--out", tmp_path / "o", "--config", "nope.yaml")
    with pytest.raises(FileNotFoundError, match="--eval-sets"):
        run_cli("build", tmp_path / "x.jsonl", "--out", tmp_path / "o", "--eval-sets", tmp_path / "none")


def _hostile_shard(tmp_path):
    sentences = ["<script>alert('x')</script> Intro.", "A red square.", 'A "blue" <b>circle</b> & more.']
    images = [encode_image(textured("red", 1, 32)), encode_image(textured("blue", 2, 32), "jpg")]
    infos = [
        ImageInfo("0.png", 2, 0.31, raw_url="http://e.example/<img src=x onerror=alert(1)>"),
        ImageInfo("1.jpg", 1, 0.27),
    ]
    doc = InterleavedDocument("doc<1>", sentences, infos, url="javascript:alert(1)", images=images)
    other = InterleavedDocument("plain", ["Only text."], [], images=[])
    with InterleavedShardWriter(tmp_path / "shards", prefix="t") as writer:
        writer.write(other, key="k0")
        writer.write(doc, key="k1")
    return writer.shard_paths[0], images


def test_show_renders_images_in_place_and_escapes_text(tmp_path, capsys) -> None:
    shard, images = _hostile_shard(tmp_path)
    out = tmp_path / "page.html"
    assert run_cli("show", shard, "--doc", 1, "--out", out) == 0
    html = out.read_text()
    assert len(re.findall(r"<img\b", html)) == 2
    assert "<script" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "<b>" not in html and "&lt;b&gt;circle&lt;/b&gt; &amp; more" in html
    assert "onerror=alert(1)&gt;" in html and 'href="javascript' not in html
    assert "Content-Security-Policy" in html
    # Each image sits right before the sentence it is matched to, with its similarity.
    positions = [html.index(s) for s in ("Intro.", "A red square.", "&quot;blue&quot;")]
    uris = [html.index(base64.b64encode(im.data).decode()[:40]) for im in images]
    assert positions[0] < uris[1] < positions[1] < uris[0] < positions[2]
    assert "similarity 0.310" in html and "similarity 0.270" in html
    assert "document doc<1> (2 images)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="has 2 readable document"):
        run_cli("show", shard, "--doc", 5, "--out", out)


def test_flamingo_data_group_has_every_command() -> None:
    from flamingo.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["data", "show", "x.tar", "--out", "p.html"])
    assert args.doc == 0 and callable(args.func)
    data = parser.parse_args(["data", "validate", "x.tar"])
    assert data.data_command == "validate"
    for command in ("build", "convert"):
        with pytest.raises(SystemExit):  # known commands that need arguments, not "invalid choice"
            parser.parse_args(["data", command])
