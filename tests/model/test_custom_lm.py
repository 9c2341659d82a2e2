"""Custom LM classes register themselves; the model core names none of them.

The quickstart's LM is the example: ``import flamingo.model`` knows nothing of it, and a checkpoint that stores
it loads in a fresh process because its ``lm/config.json`` names the module that registers it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from flamingo.errors import FlamingoError
from flamingo.model import Flamingo, FlamingoConfig
from flamingo.model.config import CrossAttnConfig, LMConfig, PerceiverConfig
from flamingo.model.lm import CUSTOM_LMS, LM_MODULE_KEY, ensure_lm_class
from flamingo.model.tiny import tiny_vision, train_tiny_tokenizer

SRC = Path(__file__).resolve().parents[2] / "src"

# In a fresh interpreter: the model core alone registers nothing; `flamingo generate` on a checkpoint of the
# quickstart's LM then imports the LM's module (and no other part of the quickstart) and registers it.
_FRESH = """
import sys
import flamingo.model, flamingo.model.checkpoint
from flamingo.model.lm import CUSTOM_LMS
assert not CUSTOM_LMS, CUSTOM_LMS
assert not [m for m in sys.modules if m.startswith("flamingo.quickstart")]
from flamingo.cli import main
assert main(["generate", "--model", sys.argv[1], "--image", sys.argv[2], "--prompt", "<image>a",
             "--max-new-tokens", "3"]) == 0
quickstart = sorted(m for m in sys.modules if m.startswith("flamingo.quickstart"))
# the command line's parser module (argparse only) and the LM's module, not the quickstart's pipeline
assert quickstart == ["flamingo.quickstart", "flamingo.quickstart.cli", "flamingo.quickstart.world_lm"], quickstart
assert CUSTOM_LMS["flamingo_quickstart_lm"].plain_head
print("fresh process: ok")
"""


def smear_flamingo() -> Flamingo:
    from flamingo.quickstart.world_lm import SmearLMConfig, SmearLMForCausalLM

    torch.manual_seed(0)
    tokenizer = train_tiny_tokenizer()
    lm = SmearLMForCausalLM(SmearLMConfig(vocab_size=len(tokenizer), num_hidden_layers=2)).eval()
    vision_cfg, adapter = tiny_vision("clip")  # a transformers tower: no open_clip import
    config = FlamingoConfig(
        lm=LMConfig(name_or_path="tiny-smear"),
        vision=vision_cfg,
        perceiver=PerceiverConfig(depth=1, heads=2, dim_head=16, num_latents=4),
        cross_attn=CrossAttnConfig(every_n=1, heads=2, dim_head=16, gate_init=0.5),
    )
    return Flamingo.from_config(config, lm=lm, tokenizer=tokenizer, vision=adapter.eval())


def test_a_checkpoint_of_the_quickstart_lm_loads_in_a_fresh_process(tmp_path) -> None:
    model = smear_flamingo()
    assert model.fused_loss_supported()  # registered with plain_head=True when its module was imported
    model.save_pretrained(tmp_path / "ckpt", save_backbones=True)
    saved = json.loads((tmp_path / "ckpt" / "lm" / "config.json").read_text())
    assert saved[LM_MODULE_KEY] == "flamingo.quickstart.world_lm"

    loaded = Flamingo.from_pretrained(tmp_path / "ckpt")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.lm(input_ids=ids).logits, model.lm(input_ids=ids).logits)

    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _FRESH, str(tmp_path / "ckpt"), str(tmp_path / "red.png")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fresh process: ok" in done.stdout


def test_a_config_may_only_name_a_module_of_this_package(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "evil", LM_MODULE_KEY: "os"}))
    with pytest.raises(FlamingoError, match=r"'os' is not a module of flamingo-vlm"):
        ensure_lm_class(str(tmp_path))
    assert "evil" not in CUSTOM_LMS
