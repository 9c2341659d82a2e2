"""Shard writers and readers: round trips, the four input formats, and hostile input."""

from __future__ import annotations

import json
import logging
import random
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from flamingo.data.paths import expand_braces, expand_paths
from flamingo.data.schema import ImageInfo, InterleavedDocument, SchemaError
from flamingo.data.shards import (
    InterleavedShardWriter,
    PairShardWriter,
    ReadStats,
    read_interleaved,
    read_mmc4_jsonl,
    read_pairs,
)
from flamingo.data.synthetic import (
    synthetic_documents,
    synthetic_pair,
    write_mmc4_jsonl,
    write_mmc4_tar,
    write_synthetic_interleaved,
)


def _same_document(a: InterleavedDocument, b: InterleavedDocument) -> bool:
    return a == b and [i.data for i in a.images] == [i.data for i in b.images]


def _members(document: InterleavedDocument, key: str) -> list[tuple[str, bytes]]:
    members = [(f"{key}.json", json.dumps(document.to_dict()).encode())]
    return members + [(f"{key}.{i.member}", img.data) for i, img in zip(document.image_info, document.images)]


def test_interleaved_round_trip_is_byte_identical(tmp_path: Path) -> None:
    first = write_synthetic_interleaved(tmp_path / "a", 7, seed=1, max_samples_per_shard=3)
    second = write_synthetic_interleaved(tmp_path / "b", 7, seed=1, max_samples_per_shard=3)
    assert [p.name for p in first] == [
        "interleaved-000000.tar",
        "interleaved-000001.tar",
        "interleaved-000002.tar",
    ]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [p.name for p in first]  # no temp files left
    with tarfile.open(first[0]) as tar:
        names = tar.getnames()
    assert names[:2] == ["doc000000.json", "doc000000.0.png"]
    stats = ReadStats()
    read = list(read_interleaved(tmp_path / "a", stats=stats))
    expected = synthetic_documents(7, seed=1)
    assert len(read) == 7 and all(_same_document(r, e) for r, e in zip(read, expected))
    assert stats.samples == 7 and stats.files == 3 and stats.total_skipped == 0
    assert read[0].images[0].decode().size == (32, 32)


def test_pair_round_trip_is_byte_identical(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        rng = random.Random(3)
        with PairShardWriter(tmp_path / folder, "pairs", max_samples_per_shard=2) as writer:
            pairs = [synthetic_pair(rng, f"{i:04d}") for i in range(5)]
            for pair in pairs:
                writer.write(pair)
    assert [p.read_bytes() for p in sorted((tmp_path / "a").iterdir())] == [
        p.read_bytes() for p in sorted((tmp_path / "b").iterdir())
    ]
    read = list(read_pairs(str(tmp_path / "a" / "pairs-{000000..000002}.tar")))
    assert [(p.key, p.caption, p.image.data, p.url) for p in read] == [
        (p.key, p.caption, p.image.data, p.url) for p in pairs
    ]
    assert read[0].metadata == {"key": "0000", "status": "success"} and read[0].width == 32


def test_writer_discards_the_unfinished_shard_on_error(tmp_path: Path) -> None:
    documents = synthetic_documents(4)
    with (
        pytest.raises(RuntimeError),
        InterleavedShardWriter(tmp_path, "x", max_samples_per_shard=3) as writer,
    ):
        for document in documents:
            writer.write(document)
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-000000.tar"]
    assert [d.id for d in read_interleaved(tmp_path)] == ["doc000000", "doc000001", "doc000002"]


def test_writer_rejects_inconsistent_documents(tmp_path: Path) -> None:
    document = synthetic_documents(1)[0]
    with InterleavedShardWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match="image_info entries but"):
            writer.write(InterleavedDocument(document.id, document.text_list, document.image_info))
        bad = InterleavedDocument("d1", ["one"], [ImageInfo("0.png", 5)], images=document.images[:1])
        with pytest.raises(SchemaError, match=r"image_info\[0\].matched_text_index.*out of range.*Fix"):
            writer.write(bad)
        with pytest.raises(ValueError, match="not a WebDataset key"):
            writer.write(document, key="has.dot")


def test_expand_paths_braces_globs_and_folders(tmp_path: Path) -> None:
    assert expand_braces("s-{008..011}.tar") == ["s-008.tar", "s-009.tar", "s-010.tar", "s-011.tar"]
    assert expand_braces("{a,b{1..2}}.tar") == ["a.tar", "b1.tar", "b2.tar"]
    for name in ("s-000.tar", "s-001.tar", "s-002.tar", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in expand_paths(tmp_path)] == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert [p.name for p in expand_paths(str(tmp_path / "s-00[02].tar"))] == ["s-000.tar", "s-002.tar"]
    assert [p.name for p in expand_paths([str(tmp_path / "s-{001..002}.tar")])] == ["s-001.tar", "s-002.tar"]


def test_read_openflamingo_mmc4_shard(tmp_path: Path) -> None:
    documents = synthetic_documents(3, seed=2)
    documents[1].similarity_matrix = None  # OpenFlamingo's shards may lack it
    write_mmc4_tar(documents, tmp_path / "mmc4.tar")
    read = list(read_interleaved(tmp_path / "mmc4.tar"))
    assert [d.id for d in read] == [d.id for d in documents]
    for got, want in zip(read, documents):
        assert got.text_list == want.text_list and got.similarity_matrix == want.similarity_matrix
        assert [i.data for i in got.images] == [i.data for i in want.images]
        assert [i.matched_text_index for i in got.image_info] == [
            i.matched_text_index for i in want.image_info
        ]
        assert [i.sha256 for i in got.image_info] == [i.sha256 for i in want.image_info]
        assert all(i.width == 32 for i in got.image_info)


def test_read_mmc4_jsonl_with_image_folder(tmp_path: Path) -> None:
    documents = synthetic_documents(3, seed=4, max_images=3)
    write_mmc4_jsonl(documents, tmp_path / "docs.jsonl", tmp_path / "images")
    (tmp_path / "images" / "doc000001_0.png").unlink()  # link rot
    stats = ReadStats()
    read = list(read_mmc4_jsonl(tmp_path / "docs.jsonl", tmp_path / "images", stats=stats))
    assert [d.text_list for d in read] == [documents[0].text_list, documents[2].text_list]
    assert read[0].id == "docs-0000000" and stats.skipped == {"missing_member": 1}
    stats = ReadStats()
    kept = list(
        read_mmc4_jsonl(tmp_path / "docs.jsonl", tmp_path / "images", stats=stats, drop_bad_images=True)
    )
    assert len(kept) == 3 and len(kept[1].images) == len(documents[1].images) - 1
    assert [i.data for i in kept[1].images] == [i.data for i in documents[1].images[1:]]
    assert kept[1].similarity_matrix == documents[1].similarity_matrix[1:]
    assert stats.images_dropped == {"missing_member": 1} and stats.total_skipped == 0


def test_interleaved_reader_skips_hostile_samples(tmp_path: Path, write_tar, caplog) -> None:
    good0, corrupt, _, missing, good4 = synthetic_documents(5, seed=5, max_images=2)
    corrupt.image_info = [
        replace(info, sha256="") for info in corrupt.image_info
    ]  # so decoding must catch it
    members = _members(good0, "k0")
    members += [(n, b"\xff\xd8 not an image" if n.endswith("png") else d) for n, d in _members(corrupt, "k1")]
    members += [("k2.json", b'{"format": "flamingo-interleaved/1", "id": ')]
    members += _members(missing, "k3")[:-1]  # its last image member is missing
    members += _members(good4, "k4")
    write_tar(tmp_path / "hostile.tar", members)
    stats = ReadStats()
    with caplog.at_level(logging.WARNING, logger="flamingo.data"):
        read = list(read_interleaved([tmp_path / "hostile.tar", tmp_path / "absent.tar"], stats=stats))
    assert [d.id for d in read] == [good0.id, good4.id]
    assert stats.skipped == {"corrupt_image": 1, "bad_json": 1, "missing_member": 1, "missing_file": 1}
    assert len(caplog.records) == 2  # one warning per file, not per sample
    assert "hostile.tar" in caplog.records[0].getMessage() and "bad_json=1" in caplog.records[0].getMessage()


def _data_offsets(path: Path) -> dict[str, tuple[int, int]]:
    with tarfile.open(path) as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers()}


def test_reader_survives_a_tar_cut_in_the_middle(tmp_path: Path) -> None:
    (shard,) = write_synthetic_interleaved(tmp_path / "full", 6, seed=6)
    data = shard.read_bytes()
    offsets = _data_offsets(shard)
    start, size = offsets["doc000003.0.png"]
    (tmp_path / "cut.tar").write_bytes(data[: start + size // 2])  # inside doc 3's first image
    stats = ReadStats()
    read = list(read_interleaved(tmp_path / "cut.tar", stats=stats))
    assert [d.id for d in read] == ["doc000000", "doc000001", "doc000002"]
    assert stats.skipped == {"truncated_tar": 1, "missing_member": 1}
    # Cut at half the file: whatever the position, every document wholly before the cut is read.
    half = len(data) // 2
    (tmp_path / "half.tar").write_bytes(data[:half])
    complete = {name.split(".")[0] for name in offsets} - {
        name.split(".")[0] for name, (start, size) in offsets.items() if start + size > half
    }
    stats = ReadStats()
    assert sorted(d.id for d in read_interleaved(tmp_path / "half.tar", stats=stats)) == sorted(complete)
    assert stats.skipped["truncated_tar"] == 1


def test_pair_reader_skips_hostile_samples(tmp_path: Path, write_tar) -> None:
    rng = random.Random(7)
    good = [synthetic_pair(rng, f"p{i}") for i in range(3)]
    members = [("p0.jpg", good[0].image.data), ("p0.txt", b"a red circle")]
    members += [("p1.jpg", b"corrupt"), ("p1.txt", b"broken")]
    members += [("p2.jpg", good[2].image.data), ("p2.json", b'{"url": null}')]  # no caption anywhere
    members += [("p3.txt", b"caption without image")]
    members += [("p4.png", good[1].image.data), ("p4.json", b'{"caption": "from json", "url": "u"}')]
    write_tar(tmp_path / "pairs.tar", members)
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file at all" * 40)
    stats = ReadStats()
    read = list(read_pairs([tmp_path / "pairs.tar", tmp_path / "junk.tar"], stats=stats))
    assert [(p.key, p.caption) for p in read] == [("p0", "a red circle"), ("p4", "from json")]
    assert read[1].image.ext == "png" and read[1].url == "u"
    assert stats.skipped == {"corrupt_image": 1, "schema_error": 1, "missing_member": 1, "unreadable_file": 1}


def test_reader_checks_stored_hashes(tmp_path: Path, write_tar) -> None:
    first, second = synthetic_documents(2, seed=8)
    swapped = [
        (name, second.images[0].data if name.endswith(".0.png") else data)
        for name, data in _members(first, "k")
    ]
    write_tar(tmp_path / "s.tar", swapped + _members(second, "m"))
    stats = ReadStats()
    assert [d.id for d in read_interleaved(tmp_path / "s.tar", stats=stats)] == [second.id]
    assert stats.skipped == {"sha256_mismatch": 1}
