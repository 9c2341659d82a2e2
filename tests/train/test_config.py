"""Training configs: YAML + dotted overrides, errors that name the key, and the OpenFlamingo v2 recipes."""

from __future__ import annotations

import itertools

import pytest
from train_support import ROOT, TINY_PRESET

from flamingo.train.config import ConfigError, RunConfig, describe_fields, load_config
from flamingo.train.optim import lr_at


def test_dotted_overrides_are_typed_and_reach_nested_lists():
    config = load_config(
        TINY_PRESET,
        [
            "train.lr=3e-4",
            "data.sources.0.batch_size=8",
            "data.sources.1.loss_weight=0.5",
            "train.betas=[0.9, 0.95]",
        ],
    )
    assert config.train.lr == pytest.approx(3e-4) and isinstance(config.train.lr, float)
    assert config.data.sources[0].batch_size == 8 and config.data.sources[1].loss_weight == 0.5
    assert config.train.betas == [0.9, 0.95]
    more = load_config(TINY_PRESET, ["data.sources.2.name=extra", "data.sources.2.kind=pairs"])
    assert [s.name for s in more.data.sources] == ["interleaved", "pairs", "extra"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "field 'train.lrr': unknown field; did you mean 'lr'"),
        (
            "data.sources.0.bacth_size=2",
            "field 'data.sources.0.bacth_size': unknown field; did you mean 'batch_size'",
        ),
        ("train.steps=many", "field 'train.steps': got 'many'; expected an integer from 1 to"),
        ("train.precision=fp8", "field 'train.precision': got 'fp8'; expected one of"),
        ("data.sources.9.name=x", "index 9 is past the end"),
        ("train.steps=0", "field 'train.steps': got 0; expected an integer from 1 to"),
        ("train.betas=[0.9]", "train.betas must have two values"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(TINY_PRESET, [override])
    assert f"override '{override}'" in str(error.value)  # the error names the override that gave the value


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: 1.0e-4\nmodle:\n  kind: tiny\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: field 'modle': unknown field; did you mean 'model'"):
        load_config(path)


def test_every_field_has_a_doc_line():
    lines = describe_fields(RunConfig)
    assert any(line.startswith("train.lr = ") for line in lines)
    undocumented = [line for line in lines if line.endswith("# ") or line.endswith(": ")]
    assert not undocumented


@pytest.mark.parametrize(("name", "precision"), [("of-3b", "fp32"), ("of-4b", "fp32"), ("of-9b", "bf16")])
def test_openflamingo_presets_follow_the_v2_recipe(name, precision):
    config = load_config(ROOT / "configs" / "train" / f"{name}.yaml")
    train = config.train
    assert (train.lr, train.warmup_steps, train.schedule) == (1e-4, 1875, "constant")
    assert (train.weight_decay, train.decay_on, train.grad_clip) == (0.1, "cross_attn", 1.0)
    assert train.precision == precision and config.model.kind == "openflamingo"
    sources = {s.kind: s for s in config.data.sources}
    assert sources["pairs"].batch_size == 2 * sources["interleaved"].batch_size
    assert (sources["pairs"].loss_weight, sources["interleaved"].loss_weight) == (0.2, 1.0)
    assert (sources["pairs"].sequence_length, sources["interleaved"].sequence_length) == (32, 256)
    assert config.data.mixing == "all"
    assert lr_at(0, train.lr, train, train.steps) == pytest.approx(1e-4 / 1875)
    assert lr_at(1874, train.lr, train, train.steps) == lr_at(20000, train.lr, train, train.steps) == 1e-4


def test_cosine_schedule_decays_to_its_floor():
    train = load_config(
        TINY_PRESET, ["train.schedule=cosine", "train.min_lr_ratio=0.1", "train.steps=20"]
    ).train
    lrs = [lr_at(step, train.lr, train, train.steps) for step in range(train.steps)]
    assert lrs[4] == pytest.approx(train.lr) and lrs[-1] == pytest.approx(0.1 * train.lr)
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))


def test_presets_load_by_name_from_any_folder(tmp_path, monkeypatch):
    """Outside a clone (here: another working folder) a preset's path or bare name finds the shipped preset."""
    monkeypatch.chdir(tmp_path)
    by_path = load_config("configs/train/of-3b.yaml")
    assert by_path.model.kind == "openflamingo" and by_path.to_dict() == load_config("of-3b").to_dict()
    assert by_path.to_dict() == load_config(ROOT / "configs" / "train" / "of-3b.yaml").to_dict()
    with pytest.raises(FileNotFoundError, match=r"of-5b: no such config file .*configs/train/"):
        load_config("of-5b")
