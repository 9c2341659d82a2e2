"""`flamingo data validate --config` checks a training config's sources with the trainer's own settings and
tokenizer, so its counts are the ones the loader logs for the same shards."""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter

import yaml
from train_support import all_masked_document, tar_members, write_tar

from flamingo.data import cli as data_cli
from flamingo.data.loader import SourceDataset
from flamingo.data.synthetic import synthetic_document
from flamingo.train.config import load_config

SOURCE = {
    "name": "web",
    "kind": "interleaved",
    "max_tokens": 96,
    "max_images": 3,
    "min_image_bytes": 0,
    "single_image_drop_prob": 0.0,
    "shuffle_block": 1,
    "batch_size": 1,
}


def _document_members(document, key: str) -> list[tuple[str, bytes]]:
    members = [(f"{key}.json", json.dumps(document.to_dict()).encode())]
    return members + [(f"{key}.{i.member}", im.data) for i, im in zip(document.image_info, document.images)]


def _hostile_shard(tmp_path, good_shard: str, tokenizer):
    """A usable document first, then synthetic documents with one of each problem among them."""
    first = synthetic_document(random.Random(1), "first", num_sentences=1, num_images=1)
    members = _document_members(first, "first")
    for name, data in tar_members(good_shard):
        if name.endswith(".json"):
            document = json.loads(data)
            if name == "doc000000.json":  # no stored hashes: decoding must catch its corrupt images
                for info in document["image_info"]:
                    del info["sha256"]
            elif name == "doc000002.json":
                document["image_info"] = 5
            elif name == "doc000003.json":
                document["text_list"][-1] += " <image>"
            data = b"{oops" if name == "doc000001.json" else json.dumps(document).encode()
        elif name.startswith("doc000000."):
            data = b"not a png"
        members.append((name, data))
    members += _document_members(all_masked_document(tokenizer, 96), "masked0")
    return write_tar(tmp_path / "web-000000.tar", members)


def _loader_epoch_counts(source, model) -> tuple[Counter, Counter]:
    """The loader's read skips and left-out counts over one epoch (the first sample is counted twice)."""
    tokens = model.config.tokens
    dataset = SourceDataset(source, model.tokenizer, model.vision.preprocess, tokens.image_id, tokens.eoc_id)
    first = None
    for _, state in dataset:
        counts = Counter(state["read_stats"]["skipped"]), Counter(state["skipped"])
        first = first or counts
        if state["position"]["epoch"] == 1:
            return counts[0] - first[0], counts[1] - first[1]
    raise AssertionError("unreachable: the loader is endless")


def test_validate_with_the_training_config_counts_what_the_loader_counts(
    tmp_path, shards, tiny_model, capsys
):
    shard = _hostile_shard(tmp_path, shards["interleaved"][0], tiny_model.tokenizer)
    config = {
        "run_dir": str(tmp_path / "run"),
        "model": {"kind": "tiny", "name": "llama"},
        "data": {"sources": [{**SOURCE, "shards": [str(shard)]}]},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    parser = argparse.ArgumentParser(prog="flamingo")
    data_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["data", "validate", "--config", str(tmp_path / "run.yaml"), "--json", str(tmp_path / "r.json")]
    )
    assert args.func(args) == 1
    report = json.loads((tmp_path / "r.json").read_text())["web"]
    assert "source 'web' (interleaved, max_tokens 96)" in capsys.readouterr().out
    read, left_out = _loader_epoch_counts(load_config(tmp_path / "run.yaml").data.sources[0], tiny_model)
    assert report["skipped"] == dict(read) and report["left_out"] == dict(left_out)
    problems = ("corrupt_image", "bad_json", "bad_field_type:image_info", "image_marker_mismatch")
    assert {reason: read[reason] for reason in problems} == dict.fromkeys(problems, 1)
    assert set(read) <= {*problems, "image_past_truncation"}  # synthetic documents longer than 96 tokens
    assert left_out["no_supervised_tokens"] == 1
    unused = sum(v for k, v in left_out.items() if not k.startswith("image_"))  # samples, not images
    assert report["samples"] == 22 and report["usable"] == 22 - sum(read.values()) - unused
