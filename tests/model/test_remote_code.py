"""A model's own Python code runs only when the caller says so, whatever the checkpoint's files claim."""

import json
import re
import shutil
import sys

import pytest

from flamingo.model.remote_code import RemoteCodeError
from flamingo.model.tiny import build_tiny_flamingo

REFUSAL = re.compile(r"needs code from the model repository to run .*pass --trust-remote-code")

# Written to <checkpoint>/lm/evil.py. Importing it leaves the marker file; its classes are real (a Llama under
# another name) so a load that is allowed to run it completes.
EVIL = """
import pathlib

pathlib.Path({marker!r}).write_text("the checkpoint's code ran")

from transformers import LlamaConfig, LlamaForCausalLM


class EvilConfig(LlamaConfig):
    model_type = {model_type!r}


class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig
"""


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """One tiny Llama Flamingo saved with its backbones; each test copies it."""
    path = tmp_path_factory.mktemp("tiny") / "ckpt"
    build_tiny_flamingo("llama").save_pretrained(str(path), save_backbones=True)
    return path


@pytest.fixture
def modules_cache(tmp_path, monkeypatch):
    """transformers copies a repository's code into its modules cache before importing it: keep that copy (and
    the imported modules) inside this test."""
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("transformers_modules"):
            del sys.modules[name]


def plant(saved_tiny, tmp_path, config_flag: bool = True, model_type: str = "llama"):
    """A copy of the tiny checkpoint whose LM asks for ``lm/evil.py``; returns (directory, marker file)."""
    ckpt, marker = tmp_path / "evil-ckpt", tmp_path / "pwned"
    shutil.copytree(saved_tiny, ckpt)
    (ckpt / "lm" / "evil.py").write_text(EVIL.format(marker=str(marker), model_type=model_type))
    lm_config = json.loads((ckpt / "lm" / "config.json").read_text())
    lm_config["model_type"] = model_type
    lm_config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"}
    (ckpt / "lm" / "config.json").write_text(json.dumps(lm_config))
    config = json.loads((ckpt / "config.json").read_text())
    config["lm"]["trust_remote_code"] = config_flag
    (ckpt / "config.json").write_text(json.dumps(config))
    return ckpt, marker


def assert_refused(error: Exception, ckpt) -> None:
    message = str(error)
    assert "\n" not in message and str(ckpt) in message and REFUSAL.search(message), message


def test_config_saying_trust_remote_code_is_not_permission(saved_tiny, tmp_path, modules_cache):
    from flamingo.model.flamingo import Flamingo

    ckpt, marker = plant(saved_tiny, tmp_path)
    with pytest.raises(RemoteCodeError) as err:
        Flamingo.from_pretrained(str(ckpt))
    assert_refused(err.value, ckpt)
    assert not marker.exists()


def test_the_caller_can_allow_it(saved_tiny, tmp_path, modules_cache):
    from flamingo.model.flamingo import Flamingo

    ckpt, marker = plant(saved_tiny, tmp_path)
    model = Flamingo.from_pretrained(str(ckpt), trust_remote_code=True)
    assert marker.exists()
    assert type(model.lm).__name__ == "EvilForCausalLM"


def test_pipeline_refuses_and_allows(saved_tiny, tmp_path, modules_cache):
    from flamingo.pipeline import FlamingoPipeline

    ckpt, marker = plant(saved_tiny, tmp_path)
    with pytest.raises(RemoteCodeError) as err:
        FlamingoPipeline.from_pretrained(str(ckpt))
    assert_refused(err.value, ckpt)
    assert not marker.exists()
    pipe = FlamingoPipeline.from_pretrained(str(ckpt), trust_remote_code=True)
    assert marker.exists() and type(pipe.model.lm).__name__ == "EvilForCausalLM"


def test_cli_generate_refuses_in_one_line_and_the_flag_allows(saved_tiny, tmp_path, capsys, modules_cache):
    from flamingo.cli import main

    ckpt, marker = plant(saved_tiny, tmp_path)
    command = ["generate", "--model", str(ckpt), "--prompt", "a photo of", "--max-new-tokens", "2"]
    assert main(command) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("flamingo generate: error: ") and "\n" not in err and REFUSAL.search(err), err
    assert not marker.exists()
    assert main([*command, "--trust-remote-code"]) == 0
    assert marker.exists()


def test_eval_serve_and_train_loaders_refuse(saved_tiny, tmp_path, modules_cache):
    from flamingo.eval.models import FlamingoEvalModel
    from flamingo.serve.server import load_server_pipeline
    from flamingo.train.config import ModelConfig
    from flamingo.train.trainer import build_model

    ckpt, marker = plant(saved_tiny, tmp_path)
    for load in (
        lambda: FlamingoEvalModel.from_pretrained(str(ckpt)),
        lambda: load_server_pipeline(str(ckpt)),
        lambda: build_model(ModelConfig(kind="pretrained", name=str(ckpt))),
    ):
        with pytest.raises(RemoteCodeError) as err:
            load()
        assert_refused(err.value, ckpt)
    assert not marker.exists()
    build_model(ModelConfig(kind="pretrained", name=str(ckpt)), trust_remote_code=True)
    assert marker.exists()


def test_an_lm_only_its_own_code_defines_is_refused_without_any_flag_in_the_config(
    saved_tiny, tmp_path, modules_cache
):
    from flamingo.model.flamingo import Flamingo

    ckpt, marker = plant(saved_tiny, tmp_path, config_flag=False, model_type="evil_lm")
    with pytest.raises(RemoteCodeError, match="model_type 'evil_lm'") as err:
        Flamingo.from_pretrained(str(ckpt))
    assert_refused(err.value, ckpt)
    assert not marker.exists()


def test_an_auto_map_over_a_built_in_model_type_loads_the_built_in_class(saved_tiny, tmp_path, modules_cache):
    """transformers has its own Llama: without permission that class is used and the repository's never is."""
    from flamingo.model.flamingo import Flamingo

    ckpt, marker = plant(saved_tiny, tmp_path, config_flag=False)
    model = Flamingo.from_pretrained(str(ckpt))
    assert type(model.lm).__name__ == "LlamaForCausalLM" and not marker.exists()


def test_every_model_loading_command_has_the_flag_and_it_is_off_by_default():
    from flamingo.cli import build_parser

    parser = build_parser()
    commands = [
        ["generate", "--model", "m", "--prompt", "p"],
        ["convert", "from-openflamingo", "--preset", "p", "--out", "o"],
        ["eval", "--model", "m"],
        ["serve", "--model", "m"],
        ["train"],
    ]
    for command in commands:
        assert parser.parse_args(command).trust_remote_code is False
        assert parser.parse_args([*command, "--trust-remote-code"]).trust_remote_code is True


MPT1B = ("OpenFlamingo-3B-vitl-mpt1b", "OpenFlamingo-3B-vitl-mpt1b-langinstruct")


@pytest.mark.parametrize("preset", MPT1B)
def test_mpt1b_presets_are_pinned_and_refused_before_any_download(preset, monkeypatch):
    import huggingface_hub

    from flamingo.model.convert import load_openflamingo
    from flamingo.model.convert.openflamingo import openflamingo_config

    config = openflamingo_config(preset)
    assert config.lm.trust_remote_code and re.fullmatch(r"[0-9a-f]{40}", config.lm.revision)
    assert (
        openflamingo_config(preset, lm="/models/my-mpt").lm.revision is None
    )  # the pin is the preset's repo's

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded before refusing")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    with pytest.raises(RemoteCodeError, match=f"^{preset}: the language model .*--trust-remote-code"):
        load_openflamingo(preset)


def test_an_allowed_preset_passes_its_pinned_revision_to_transformers(monkeypatch):
    from transformers import AutoModelForCausalLM

    from flamingo.model.convert import load_openflamingo
    from flamingo.model.presets import OPENFLAMINGO_PRESETS

    seen = {}

    def fake_load(name, **kwargs):
        seen.update(kwargs, name=name)
        raise LookupError("stop here")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_load)
    with pytest.raises(LookupError, match="stop here"):
        load_openflamingo(MPT1B[0], trust_remote_code=True)
    spec = OPENFLAMINGO_PRESETS[MPT1B[0]]
    assert seen == {
        "name": spec["lm"],
        "revision": spec["revision"],
        "trust_remote_code": True,
        "dtype": None,
    }


def test_a_preset_that_needs_no_remote_code_does_not_use_the_permission(monkeypatch):
    from transformers import AutoModelForCausalLM

    from flamingo.model.convert import load_openflamingo

    seen = {}

    def fake_load(name, **kwargs):
        seen.update(kwargs)
        raise LookupError("stop here")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_load)
    with pytest.raises(LookupError):
        load_openflamingo("OpenFlamingo-4B-vitl-rpj3b", trust_remote_code=True)
    assert seen["trust_remote_code"] is False
