"""Provenance in results.json: code version and commit, the scoring tools behind a score, data checksums."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import pytest

from flamingo.eval import stemming
from flamingo.eval.results import PredictionRecord, git_commit, markdown_report, provenance, write_results
from flamingo.eval.tasks import load_task


def _okvqa_files(root):
    """The four OK-VQA files of the task file, with made-up content (only their bytes matter here)."""
    task = load_task("okvqa")
    for split in (task.train, task.test):
        for key in ("questions", "annotations"):
            path = root / split[key]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"split": split[key], "key": key}))
    (root / task.test["images"]).mkdir(parents=True, exist_ok=True)
    return task


def _records():
    return [PredictionRecord(str(i), 0, 0, [], "dog", "dog", ["dog"] * 10) for i in range(3)]


def test_results_hold_the_sha256_of_every_data_file_read(tmp_path):
    task = _okvqa_files(tmp_path / "data")
    results = write_results(
        tmp_path / "out", task, _records(), model={}, data={"data_root": str(tmp_path / "data")}
    )
    files = json.loads((tmp_path / "out" / "results.json").read_text())["provenance"]["data_files"]
    assert set(files) == {"train.questions", "train.annotations", "test.questions", "test.annotations"}
    for key, entry in files.items():
        split, option = key.split(".")
        relative = getattr(task, split)[option]
        assert entry["path"] == relative
        assert entry["sha256"] == hashlib.sha256((tmp_path / "data" / relative).read_bytes()).hexdigest()
    assert results["provenance"]["flamingo_version"]
    # Another file content gives another checksum.
    (tmp_path / "data" / task.test["annotations"]).write_text("{}")
    again = provenance(task, tmp_path / "data")["data_files"]
    assert again["test.annotations"]["sha256"] != files["test.annotations"]["sha256"]
    assert again["test.questions"] == files["test.questions"]


def test_approximate_stemmer_is_recorded_and_named_beside_the_score(tmp_path, monkeypatch):
    monkeypatch.setattr(
        stemming, "_nltk_stemmer_or_reason", lambda: (None, "NLTK data 'corpora/wordnet' missing")
    )
    task = _okvqa_files(tmp_path / "data")
    results = write_results(
        tmp_path / "out", task, _records(), model={}, data={"data_root": str(tmp_path / "data")}
    )
    stemmer = results["provenance"]["stemmer"]
    assert stemmer == {
        "backend": "rules",
        "exact": False,
        "reason": "NLTK data 'corpora/wordnet' missing",
        "versions": {},
    }
    report = markdown_report([results])
    assert "| this model (approximate stemmer) | 100.0 |" in report
    assert "corpora/wordnet" in report


def test_exact_stemmer_is_recorded_with_its_versions(tmp_path, monkeypatch):
    pytest.importorskip("inflection")
    monkeypatch.setattr(stemming, "_nltk_stemmer_or_reason", lambda: (str.lower, ""))
    task = _okvqa_files(tmp_path / "data")
    results = write_results(
        tmp_path / "out", task, _records(), model={}, data={"data_root": str(tmp_path / "data")}
    )
    stemmer = results["provenance"]["stemmer"]
    assert (
        stemmer["backend"] == "nltk"
        and stemmer["exact"]
        and set(stemmer["versions"]) == {"nltk", "inflection"}
    )
    assert "approximate" not in markdown_report([results])


def test_cider_records_java_and_pycocoevalcap_and_vqa_has_no_stemmer():
    from importlib import metadata

    coco = provenance(load_task("coco"), None)
    assert coco["cider"]["pycocoevalcap"] == metadata.version("pycocoevalcap")
    if shutil.which("java"):
        assert "version" in coco["cider"]["java"]
    else:
        assert coco["cider"]["java"] is None
    assert "stemmer" not in coco
    vqa = provenance(load_task("vqav2"), None)
    assert "stemmer" not in vqa and "cider" not in vqa and vqa["data_files"] == {}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_commit_of_a_checkout_and_none_elsewhere(tmp_path):
    assert git_commit(tmp_path) is None  # not a repository
    repo = tmp_path / "repo"
    (repo / "src" / "flamingo").mkdir(parents=True)
    (repo / "src" / "flamingo" / "x.py").write_text("a = 1\n")

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
        ).stdout

    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    head = git("rev-parse", "HEAD").strip()
    assert git_commit(repo / "src" / "flamingo") == head
    (repo / "src" / "flamingo" / "x.py").write_text("a = 2\n")
    assert git_commit(repo / "src" / "flamingo") == head + "-dirty"
    other = tmp_path / "other"  # a repository that is not flamingo-vlm's
    other.mkdir()
    subprocess.run(["git", "-C", str(other), "init", "-q"], check=True)
    assert git_commit(other) is None
