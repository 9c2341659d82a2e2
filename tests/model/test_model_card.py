"""Model cards written with checkpoints, and hub uploads up to the network call.

The upload tests replace three ``HfApi`` methods with recorders (a test double of the network): they keep what a
commit would carry, read from the real files in the folder handed to ``upload_folder``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from safetensors.torch import load_file

from flamingo.cli import main
from flamingo.model.card import model_card, parse_card_metadata
from flamingo.model.config import FlamingoConfig, LMConfig, VisionConfig
from flamingo.model.tiny import build_tiny_flamingo


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_flamingo("llama", gate_init=0.3)


@pytest.fixture
def hub(monkeypatch):
    """Record create_repo / create_branch / upload_folder calls and the files each upload would commit."""
    calls: dict[str, list] = {"create_repo": [], "create_branch": [], "upload_folder": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append({"repo_id": repo_id, **kwargs})

    def create_branch(self, repo_id, **kwargs):
        calls["create_branch"].append({"repo_id": repo_id, **kwargs})

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        root = Path(folder_path)
        files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        calls["upload_folder"].append({"repo_id": repo_id, "files": files, **kwargs})
        return None

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_save_pretrained_writes_a_card_with_hub_metadata(tmp_path, tiny):
    tiny.save_pretrained(str(tmp_path / "ckpt"))
    text = (tmp_path / "ckpt" / "README.md").read_text()
    meta = parse_card_metadata(text)
    assert meta["library_name"] == "flamingo-vlm"
    assert meta["pipeline_tag"] == "image-text-to-text"
    assert meta["license"] == "other"
    assert "flamingo" in meta["tags"]
    assert "base_model" not in meta  # a tiny local LM and an untagged open_clip tower name no hub repository
    assert "## Architecture" in text and "Flamingo.from_pretrained" in text
    assert "every 1 decoder layer(s): 2 heads of 16" in text


def test_card_names_hub_base_models_training_and_results():
    config = FlamingoConfig(
        lm=LMConfig(name_or_path="togethercomputer/RedPajama-INCITE-Base-3B-v1"),
        vision=VisionConfig(kind="hf", name="google/siglip-base-patch16-224"),
    )
    results = {"task": "coco", "metric": "cider", "scores": {"0": {"mean": 74.91}, "4": {"mean": 77.3}}}
    text = model_card(
        config, repo_id="me/of", license="apache-2.0", training={"optim": {"lr": 1e-4}}, evaluation=[results]
    )
    meta = parse_card_metadata(text)
    assert meta["base_model"] == [
        "togethercomputer/RedPajama-INCITE-Base-3B-v1",
        "google/siglip-base-patch16-224",
    ]
    assert meta["license"] == "apache-2.0"
    assert "| coco | cider | 74.91 | 77.30 |" in text
    assert "lr: 0.0001" in text
    assert 'Flamingo.from_pretrained("me/of")' in text


def test_a_card_written_by_hand_is_kept(tmp_path, tiny):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "README.md").write_text("# my own words\n")
    tiny.save_pretrained(str(tmp_path / "ckpt"))
    assert (tmp_path / "ckpt" / "README.md").read_text() == "# my own words\n"


def test_push_to_hub_uploads_the_checkpoint_with_its_card(tiny, hub):
    tiny.push_to_hub("me/tiny-flamingo", private=True, revision="v1", commit_message="first")
    assert hub["create_repo"] == [
        {"repo_id": "me/tiny-flamingo", "private": True, "exist_ok": True, "repo_type": "model"}
    ]
    assert hub["create_branch"] == [{"repo_id": "me/tiny-flamingo", "branch": "v1", "exist_ok": True}]
    (upload,) = hub["upload_folder"]
    assert upload["repo_id"] == "me/tiny-flamingo"
    assert upload["revision"] == "v1" and upload["commit_message"] == "first"
    files = upload["files"]
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    assert any(name.startswith("tokenizer/") for name in files)
    card = files["README.md"].decode()
    assert parse_card_metadata(card)["library_name"] == "flamingo-vlm"
    assert 'Flamingo.from_pretrained("me/tiny-flamingo")' in card
    from safetensors.torch import load

    weights = load(files["model.safetensors"])
    for key, value in tiny.adapter_state_dict().items():
        assert torch.equal(weights[key], value), key


def test_push_command_adds_training_config_and_results(tmp_path, tiny, hub):
    tiny.save_pretrained(str(tmp_path / "ckpt"))
    (tmp_path / "eval" / "vqav2").mkdir(parents=True)
    (tmp_path / "eval" / "vqav2" / "results.json").write_text(
        json.dumps({"task": "vqav2", "metric": "vqa_accuracy", "scores": {"0": {"mean": 44.6}}})
    )
    (tmp_path / "config.yaml").write_text("optim:\n  lr: 0.0001\n")
    argv = ["push", str(tmp_path / "ckpt"), "me/run", "--results", str(tmp_path / "eval"), "--license", "mit"]
    code = main([*argv, "--training-config", str(tmp_path / "config.yaml")])
    assert code == 0
    (upload,) = hub["upload_folder"]
    card = upload["files"]["README.md"].decode()
    assert parse_card_metadata(card)["license"] == "mit"
    assert "| vqav2 | vqa_accuracy | 44.60 |" in card and "lr: 0.0001" in card
    assert hub["create_repo"][0]["private"] is None and upload["revision"] is None
    assert load_file(str(tmp_path / "ckpt" / "model.safetensors")).keys() == tiny.adapter_state_dict().keys()


def test_push_command_refuses_a_folder_without_a_checkpoint(tmp_path, hub, capsys):
    assert main(["push", str(tmp_path), "me/run"]) == 1
    assert "no config.json" in capsys.readouterr().err
    assert hub["create_repo"] == []
