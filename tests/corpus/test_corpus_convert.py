"""``flamingo data convert``: MMC4 (JSONL + folder, base64 shards), OBELICS parquet, pair CSV / parquet."""

from __future__ import annotations

import argparse
import json

import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest
from corpus_fakes import encode, textured

from flamingo.corpus.cli import register_data_commands
from flamingo.data.shards import ReadStats, read_interleaved, read_pairs
from flamingo.data.synthetic import synthetic_documents, write_mmc4_jsonl, write_mmc4_tar
from flamingo.data.validate import validate_shards


def run_cli(*argv: object) -> int:
    parser = argparse.ArgumentParser(prog="flamingo data")
    register_data_commands(parser.add_subparsers(dest="data_command"))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def _read(out) -> list:
    return list(read_interleaved(sorted((out / "shards").glob("*.tar")), stats=ReadStats()))


def _same_documents(converted: list, originals: list) -> None:
    for doc, original in zip(converted, originals):
        assert doc.text_list == original.text_list
        assert [i.matched_text_index for i in doc.image_info] == sorted(
            i.matched_text_index for i in original.image_info
        )
        by_sentence = {i.matched_text_index: im.data for i, im in zip(original.image_info, original.images)}
        assert [im.data for im in doc.images] == [by_sentence[i.matched_text_index] for i in doc.image_info]


def test_mmc4_jsonl_with_image_folder(tmp_path, image_server) -> None:
    originals = synthetic_documents(4, seed=3)
    write_mmc4_jsonl(originals, tmp_path / "mmc4.jsonl", tmp_path / "images")
    lines = [json.loads(line) for line in (tmp_path / "mmc4.jsonl").read_text().splitlines()]
    lost = lines[1]["image_info"][0]
    (tmp_path / "images" / lost["image_name"]).unlink()  # link rot: one image never downloaded
    out = tmp_path / "out"
    assert (
        run_cli("convert", "mmc4", tmp_path / "mmc4.jsonl", "--out", out, "--images", tmp_path / "images")
        == 0
    )
    assert validate_shards(out / "shards").ok
    docs = _read(out)
    assert len(docs) == 4
    _same_documents([docs[0], docs[2], docs[3]], [originals[0], originals[2], originals[3]])
    assert len(docs[1].image_info) == len(originals[1].image_info) - 1
    assert lost["raw_url"] not in [i.raw_url for i in docs[1].image_info]
    assert {i.raw_url for i in docs[0].image_info} == {i.raw_url for i in originals[0].image_info}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"]["read"]["images_dropped"] == {"missing_image": 1}
    assert len(docs[0].similarity_matrix) == len(docs[0].image_info)  # rows kept with their images

    # --fetch-missing downloads the lost image from its raw_url, once: a second run resumes from the manifest.
    lost_bytes = originals[1].images[0].data
    lost["raw_url"] = image_server.add("/lost.png", lost_bytes)
    (tmp_path / "mmc4.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    args = ["convert", "mmc4", tmp_path / "mmc4.jsonl", "--images", tmp_path / "images", "--fetch-missing"]
    for _ in range(2):
        assert run_cli(*args, "--out", tmp_path / "out2", "--allow-loopback", "--no-progress") == 0
    assert image_server.hits["/lost.png"] == 1
    _same_documents(_read(tmp_path / "out2"), originals)


def test_mmc4_base64_shard(tmp_path) -> None:
    originals = synthetic_documents(3, seed=5)
    shard = write_mmc4_tar(originals, tmp_path / "mmc4-000.tar")
    out = tmp_path / "out"
    assert run_cli("convert", "mmc4", shard, "--out", out, "--no-progress") == 0
    report = validate_shards(out / "shards")
    assert report.ok and report.documents == 3
    docs = _read(out)
    assert [d.id for d in docs] == [d.id for d in originals]
    _same_documents(docs, originals)
    assert all(d.similarity_matrix is not None for d in docs)


def test_obelics_parquet(tmp_path, image_server) -> None:
    red, blue, green = (encode(textured(c, i, 64)) for i, c in enumerate(["red", "blue", "green"]))
    url = image_server.add("/red.png", red)
    rows = [
        {
            "texts": [None, "First paragraph.", None, None, "Second <b>paragraph</b>.", None],
            "images": [url, None, {"bytes": blue, "path": "b.png"}, green, None, url],
            "metadata": json.dumps([None, None, {"src": "http://x.example/b.png"}, None, None, None]),
            "general_metadata": json.dumps({"url": "http://page.example/1"}),
        },
        {
            "texts": ["Only text here.", None],
            "images": [None, image_server.base + "/missing.png"],
            "metadata": None,
            "general_metadata": None,
        },
        {
            "texts": [None, "A caption under a picture at a URL in the metadata."],
            "images": [None, None],
            "metadata": json.dumps([{"src": image_server.add("/green.png", green)}, None]),
            "general_metadata": None,
        },
    ]
    table = pa.table(
        {
            "texts": pa.array([r["texts"] for r in rows], pa.list_(pa.string())),
            "images": pa.array([_image_cell(r["images"]) for r in rows]),
            "metadata": [r["metadata"] for r in rows],
            "general_metadata": [r["general_metadata"] for r in rows],
        }
    )
    pq.write_table(table, tmp_path / "obelics.parquet")
    out = tmp_path / "out"
    assert run_cli("convert", "obelics", tmp_path / "obelics.parquet", "--out", out, "--allow-loopback") == 0
    assert validate_shards(out / "shards").ok
    first, third = _read(out)
    assert first.url == "http://page.example/1"
    assert first.text_list == ["First paragraph.", "Second <b>paragraph</b>."]
    # Each image goes before the paragraph after it; of two in a row the nearer one is kept.
    assert [(i.matched_text_index, im.data) for i, im in zip(first.image_info, first.images)] == [
        (0, red),
        (1, green),
    ]
    assert first.similarity_matrix is None and first.image_info[0].matched_sim == 1.0
    assert [im.data for im in third.images] == [green]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"]["read"]["images_dropped"] == {
        "no_following_paragraph": 2,
        "no_free_paragraph": 1,
    }
    assert stats["stages"]["write"]["documents_dropped"] == {"no_image_left": 1}


def _image_cell(images: list) -> list:
    """OBELICS-like cells: a URL string, raw bytes or a {bytes, path} dict, as one struct type."""
    cells = []
    for image in images:
        if image is None:
            cells.append(None)
        elif isinstance(image, dict):
            cells.append({"bytes": image["bytes"], "path": image["path"]})
        elif isinstance(image, bytes):
            cells.append({"bytes": image, "path": None})
        else:
            cells.append({"bytes": None, "path": image})
    return cells


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_pair_lists(tmp_path, image_server, fmt) -> None:
    add = image_server.add
    gif = encode(textured("yellow", 4, 48), "GIF")
    rows = {
        "URL": [add("/a.png", encode(textured("red", 1, 48))), image_server.base + "/404", add("/c.gif", gif), add("/d.png", encode(textured("blue", 2, 48)))],
        "TEXT": ["a red square", "lost", "a yellow square", None],
        "similarity": [0.3, 0.2, 0.4, 0.5],
    }  # fmt: skip
    path = tmp_path / f"pairs.{fmt}"
    if fmt == "csv":
        pyarrow.csv.write_csv(pa.table(rows), path)
    else:
        pq.write_table(pa.table(rows), path)
    out = tmp_path / "out"
    args = ["convert", "pairs", path, "--out", out, "--url-col", "URL", "--caption-col", "TEXT"]
    assert run_cli(*args, "--allow-loopback", "--no-progress") == 0
    report = validate_shards(out / "shards")
    assert report.ok and report.pairs == 2
    pairs = list(read_pairs(out / "shards", stats=ReadStats()))
    assert [(p.key, p.caption, p.image.ext) for p in pairs] == [
        ("shard-00000_0000000", "a red square", "png"),
        ("shard-00000_0000002", "a yellow square", "png"),  # GIF re-encoded as PNG
    ]
    assert pairs[1].metadata["similarity"] == 0.4 and pairs[1].url.endswith("/c.gif")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"]["fetch"]["images_dropped"] == {"http_404": 1}
    assert stats["stages"]["read"]["images_dropped"] == {"missing_caption": 1}
    with pytest.raises(ValueError, match=r"no column 'url'.*--url-col"):
        run_cli("convert", "pairs", path, "--out", out)


def test_convert_errors(tmp_path) -> None:
    (tmp_path / "a.jsonl").write_text("")
    with pytest.raises(ValueError, match="needs --images DIR"):
        run_cli("convert", "mmc4", tmp_path / "a.jsonl", "--out", tmp_path / "o")
    (tmp_path / "b.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"b\.jsonl:1: not valid JSON"):
        run_cli("convert", "mmc4", tmp_path / "b.jsonl", "--out", tmp_path / "o", "--images", tmp_path)
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "o.parquet")
    with pytest.raises(ValueError, match="needs columns 'texts' and 'images'"):
        run_cli("convert", "obelics", tmp_path / "o.parquet", "--out", tmp_path / "o")
