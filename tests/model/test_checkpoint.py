"""Checkpoints: round trips, training only the adapters, readable errors, and no pickle execution."""

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from model_support import make_images

from flamingo.model.checkpoint import CheckpointError
from flamingo.model.convert import read_openflamingo_checkpoint
from flamingo.model.files import ModelFileError
from flamingo.model.flamingo import Flamingo
from flamingo.model.tiny import build_tiny_flamingo
from flamingo.train.freeze import freeze_backbones

PROMPT = "<image>Output: a red circle.<|endofchunk|><image>Output: two"


@pytest.mark.parametrize(("family", "vision"), [("llama", "open_clip"), ("gpt2", "clip"), ("mpt", "siglip")])
def test_save_load_round_trip_gives_identical_logits(tmp_path, family, vision):
    model = build_tiny_flamingo(family, vision=vision, gate_init=0.6, every_n=2)
    with torch.no_grad():  # make the adapters non-trivial so the round trip is meaningful
        for p in model.adapter_parameters():
            p[1].add_(0.01 * torch.randn_like(p[1]))
    model.save_pretrained(tmp_path / "ckpt", save_backbones=True)
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert saved["tokens"]["image_id"] == model.config.tokens.image_id and saved["format_version"] == 1
    loaded = Flamingo.from_pretrained(str(tmp_path / "ckpt"))
    ids = model.tokenizer([PROMPT], return_tensors="pt").input_ids
    images = make_images(1, 2)
    with torch.no_grad():
        assert torch.equal(model(images, ids).logits, loaded(images, ids).logits)


def test_optimizer_step_changes_only_adapters_and_new_rows():
    model = build_tiny_flamingo("llama", gate_init=0.6)
    trainable = freeze_backbones(model)
    assert trainable == sum(p.numel() for _, p in model.adapter_parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = model.tokenizer([PROMPT], return_tensors="pt").input_ids
    out = model(make_images(1, 2), ids, labels=ids)
    out.loss.backward()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(model.get_parameter(n).grad is None for n in frozen)
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("perceiver.", "cross_attn.", "new_token_")) for k in changed)
    assert "new_token_embeddings" in changed
    # The LM's own embedding matrix, including its rows for the added ids, is untouched.
    assert torch.equal(model.lm.get_input_embeddings().weight, before["lm.model.embed_tokens.weight"])


def test_loss_with_no_supervised_token_is_zero_not_nan():
    model = build_tiny_flamingo("llama", gate_init=0.6)
    ids = model.tokenizer([PROMPT], return_tensors="pt").input_ids
    loss = model(make_images(1, 2), ids, labels=torch.full_like(ids, -100)).loss
    assert loss.item() == 0.0 and torch.isfinite(loss)


def test_wrong_every_n_gets_a_readable_error(tmp_path):
    build_tiny_flamingo("llama", every_n=1).save_pretrained(tmp_path / "a", save_backbones=True)
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    config["cross_attn"]["every_n"] = 2
    (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        Flamingo.from_pretrained(str(tmp_path / "a"))
    message = str(err.value)
    assert "cross-attention before decoder layers [0, 1, 2, 3]" in message and "every_n" in message


def test_wrong_base_lm_width_gets_a_readable_error(tmp_path):
    from safetensors.torch import load_file

    from flamingo.model.checkpoint import load_adapter_state

    build_tiny_flamingo("llama", width=64).save_pretrained(tmp_path / "w64")
    other = build_tiny_flamingo("llama", width=32)
    with pytest.raises(CheckpointError, match=r"trained on an LM of width 64, this LM .* has width 32"):
        load_adapter_state(other, load_file(str(tmp_path / "w64" / "model.safetensors")), "w64")


def test_unknown_config_field_is_named(tmp_path):
    build_tiny_flamingo("llama").save_pretrained(tmp_path / "c", save_backbones=True)
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    config["cross_attn"]["every_m"] = 3
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"config\.json: field 'cross_attn\.every_m': unknown field; did you mean 'every_n'"
    ):
        Flamingo.from_pretrained(str(tmp_path / "c"))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    with open(path, "wb") as f:
        pickle.dump({"perceiver.latents": _Exploit(marker)}, f)
    with pytest.raises(ModelFileError, match="refused to load"):
        read_openflamingo_checkpoint(path)
    assert not marker.exists()


def test_open_clip_config_files_do_not_pile_up(tmp_path, monkeypatch):
    """A custom open_clip architecture is registered through a file that must outlive the call; processes that
    exit or are killed (SIGKILL: no exit handlers) must not leave a new folder behind each time, and the same
    name registered again with another architecture must give the new one."""
    import os
    import signal
    import subprocess
    import sys

    script = (
        "import os, signal, sys\n"
        "from flamingo.model.tiny import TINY_OPEN_CLIP\n"
        "from flamingo.model import vision\n"
        "cfg = dict(TINY_OPEN_CLIP, embed_dim=int(sys.argv[1]))\n"
        "vision._register_open_clip_config('flamingo-pileup-test', cfg)\n"
        "import open_clip.factory as f\n"
        "assert f._MODEL_CONFIGS['flamingo-pileup-test']['embed_dim'] == int(sys.argv[1])\n"
        "print(vision._OPEN_CLIP_CONFIG_DIR, flush=True)\n"
        "if sys.argv[2] == 'kill':\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}

    def run(embed_dim: int, how: str) -> Path:
        done = subprocess.run(
            [sys.executable, "-c", script, str(embed_dim), how], capture_output=True, text=True, env=env
        )
        assert done.returncode == (-signal.SIGKILL if how == "kill" else 0), done.stderr
        return Path(done.stdout.strip().splitlines()[-1])

    roots = {run(32, "exit"), run(32, "kill"), run(32, "exit")}
    assert len(roots) == 1
    (root,) = roots
    assert root.parent == tmp_path and root.name == f"flamingo-open-clip-{os.getuid()}"
    assert len(list(root.iterdir())) == 1  # one architecture, one folder, however many processes
    run(48, "kill")
    assert len(list(root.iterdir())) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("flamingo") and p != root]

    import open_clip.factory as factory

    from flamingo.model import vision

    (tmp_path / "in-process").mkdir()
    monkeypatch.setattr(vision, "_OPEN_CLIP_CONFIG_DIR", tmp_path / "in-process")  # keep /tmp clean
    vision._register_open_clip_config(
        "flamingo-pileup-test", dict(vision_cfg={"width": 8}, embed_dim=1, text_cfg={})
    )
    vision._register_open_clip_config(
        "flamingo-pileup-test", dict(vision_cfg={"width": 8}, embed_dim=2, text_cfg={})
    )
    assert factory._MODEL_CONFIGS["flamingo-pileup-test"]["embed_dim"] == 2
    vision._register_open_clip_config(
        "flamingo-pileup-test", dict(vision_cfg={"width": 8}, embed_dim=1, text_cfg={})
    )
    assert factory._MODEL_CONFIGS["flamingo-pileup-test"]["embed_dim"] == 1
