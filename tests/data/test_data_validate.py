"""validate_shards names the file, key, field and fix of each problem; shard_stats adds up."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flamingo.data.synthetic import (
    synthetic_documents,
    write_mmc4_tar,
    write_synthetic_interleaved,
    write_synthetic_pairs,
)
from flamingo.data.validate import shard_stats, validate_shards


def test_valid_shards_give_an_ok_report_with_counts(tmp_path: Path) -> None:
    write_synthetic_interleaved(tmp_path / "docs", 9, seed=3, max_samples_per_shard=4)
    write_synthetic_pairs(tmp_path / "pairs", 5, seed=3)
    documents = synthetic_documents(9, seed=3)
    report = validate_shards([tmp_path / "docs", tmp_path / "pairs"])
    assert report.ok and report.issues == [] and len(report.files) == 4
    assert report.documents == 9 and report.pairs == 5
    assert report.images == sum(len(d.image_info) for d in documents)
    assert report.sentences == sum(len(d.text_list) for d in documents)
    assert sum(report.images_per_document.values()) == 9
    assert report.to_text().startswith("OK: 4 file(s)")


def test_schema_errors_name_file_key_field_and_fix(tmp_path: Path, write_tar) -> None:
    good, bad, holey = synthetic_documents(3, seed=4, max_images=2)
    bad_dict = bad.to_dict()
    bad_dict["image_info"][0]["matched_text_index"] = 99
    holey_dict = holey.to_dict()
    members = [("a.json", json.dumps(good.to_dict()).encode()), ("a.0.png", good.images[0].data)]
    members += [("a.1.png", good.images[1].data)] if len(good.images) > 1 else []
    members += [("b.json", json.dumps(bad_dict).encode())] + [(f"b.{i.member}", b"") for i in bad.image_info]
    members += [("c.json", json.dumps(holey_dict).encode())]  # its images are missing
    members += [("d.json", b"{not json"), ("e.0.png", b"\x89PNG broken")]
    write_tar(tmp_path / "s.tar", members)
    report = validate_shards(tmp_path / "s.tar")
    assert not report.ok and report.documents == 2  # a and c parse; b has a schema error
    by_key = {(issue.key, issue.field): issue for issue in report.issues}
    issue = by_key[("b", "image_info[0].matched_text_index")]
    assert issue.file.endswith("s.tar") and "99 is out of range" in issue.message and "text_list" in issue.fix
    assert ("c", "image_info[0].member") in by_key and "c.0.png is not in the tar" in by_key[
        ("c", "image_info[0].member")
    ].message
    assert ("d", "<json>") in by_key
    assert (
        "neither a document nor a pair: ['0.png']" in by_key[("e", "<sample>")].message
    )  # image without JSON
    text = report.to_text()
    assert "PROBLEMS FOUND" in text and "s.tar [b] field 'image_info[0].matched_text_index'" in text


def test_undecodable_images_and_truncated_files_are_reported(tmp_path: Path) -> None:
    documents = synthetic_documents(4, seed=5)
    for info in documents[1].image_info:
        info.sha256 = ""
    documents[1].images[0].data = b"\x89PNG but not really"
    write_mmc4_tar(documents, tmp_path / "mmc4.tar")
    report = validate_shards(tmp_path / "mmc4.tar")
    assert report.undecodable_images == 1 and report.documents == 4
    assert [(i.key, i.field) for i in report.issues] == [("doc000001", "image_info[0]")]
    (shard,) = write_synthetic_interleaved(tmp_path / "full", 4, seed=5)
    (tmp_path / "cut.tar").write_bytes(shard.read_bytes()[: shard.stat().st_size // 2 + 100])
    report = validate_shards(tmp_path / "cut.tar")
    assert any(i.field == "<file>" and "truncated_tar" in i.message for i in report.issues)


def test_shard_stats_add_up(tmp_path: Path) -> None:
    write_synthetic_interleaved(tmp_path, 12, seed=6, max_samples_per_shard=5)
    write_synthetic_pairs(tmp_path, 3, seed=6)
    documents = synthetic_documents(12, seed=6)
    stats = shard_stats(str(tmp_path / "*.tar"))
    sims = [info.matched_sim for d in documents for info in d.image_info]
    assert stats["files"] == 4 and stats["documents"] == 12 and stats["pairs"] == 3
    assert stats["images"] == len(sims) == sum(k * v for k, v in stats["images_per_document"].items())
    assert sum(stats["images_per_document"].values()) == 12
    assert stats["sentences"] == sum(len(d.text_list) for d in documents)
    assert stats["characters"] == sum(len(s) for d in documents for s in d.text_list)
    quantiles = stats["similarity_quantiles"]
    assert quantiles["p0"] == pytest.approx(min(sims)) and quantiles["p100"] == pytest.approx(max(sims))
    assert quantiles["p50"] == pytest.approx(float(np.median(sims)), abs=1e-6)
    assert stats["similarity_above_threshold"] == 1.0  # synthetic matches are all >= 0.26
    assert stats["caption_characters"] > 0 and stats["skipped"] == {}
    json.dumps(stats)  # serialisable for the CLI
