"""Damaged model files fail with one message that names the file, wherever in a checkpoint they sit."""

import shutil

import pytest
import torch

from flamingo.model.files import ModelFileError, load_safetensors, load_torch_file
from flamingo.model.flamingo import Flamingo
from flamingo.model.tiny import build_tiny_flamingo


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny checkpoints with their backbones: an open_clip and a Hugging Face CLIP vision tower, and a LoRA."""
    from flamingo.model.lora import add_lora

    root = tmp_path_factory.mktemp("files")
    for vision in ("open_clip", "clip"):
        build_tiny_flamingo("llama", vision=vision).save_pretrained(str(root / vision), save_backbones=True)
    with_lora = build_tiny_flamingo("llama")
    add_lora(with_lora, r=2, alpha=4)
    with_lora.save_pretrained(str(root / "lora"), save_backbones=True)
    return root


def truncate(path, keep: float = 0.5) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * keep))


def assert_names(error: Exception, path) -> None:
    message = str(error)
    assert f"{path} is truncated or corrupt" in message and "re-download or re-save it" in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("source", "damaged"),
    [
        ("open_clip", "model.safetensors"),
        ("open_clip", "lm/model.safetensors"),
        ("open_clip", "vision/open_clip_visual.safetensors"),
        ("clip", "vision/model.safetensors"),
        ("lora", "lora/adapter_model.safetensors"),
    ],
)
def test_a_truncated_weights_file_is_named(saved, tmp_path, source, damaged):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved / source, ckpt)
    assert (ckpt / damaged).is_file()
    truncate(ckpt / damaged)
    with pytest.raises(ModelFileError) as err:
        Flamingo.from_pretrained(str(ckpt))
    assert_names(err.value, ckpt / damaged)


@pytest.mark.parametrize("keep", [0.0, 0.001, 0.99])
def test_any_cut_is_caught_and_a_whole_file_loads(saved, tmp_path, keep):
    path = tmp_path / "w.safetensors"
    shutil.copy(saved / "open_clip" / "model.safetensors", path)
    assert load_safetensors(path).keys()
    truncate(path, keep)
    with pytest.raises(ModelFileError) as err:
        load_safetensors(path)
    assert_names(err.value, path)


def test_a_missing_file_is_still_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.safetensors"):
        load_safetensors(tmp_path / "nothing.safetensors")


def test_openflamingo_safetensors_import_names_a_truncated_file(saved, tmp_path):
    from flamingo.model.convert import read_openflamingo_checkpoint

    path = tmp_path / "checkpoint.safetensors"
    shutil.copy(saved / "open_clip" / "model.safetensors", path)
    truncate(path)
    with pytest.raises(ModelFileError) as err:
        read_openflamingo_checkpoint(path)
    assert_names(err.value, path)


def test_a_truncated_torch_file_is_named(tmp_path):
    path = tmp_path / "optimizer.pt"
    torch.save({"state": {0: {"exp_avg": torch.ones(64, 64)}}}, path)
    assert torch.equal(load_torch_file(path)["state"][0]["exp_avg"], torch.ones(64, 64))
    truncate(path)
    with pytest.raises(ModelFileError) as err:
        load_torch_file(path)
    assert_names(err.value, path)
