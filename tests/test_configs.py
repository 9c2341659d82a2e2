"""The strict config loader: every config file kind (model, training, builder, evaluation task, quickstart) either
loads into a valid config or fails with one one-line ConfigError naming the file and the field."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import pytest
import yaml
from config_support import ROOT, expect_one_line_error, model_dict

from flamingo.cli import main
from flamingo.configs import ConfigError, bounds_text, from_mapping, read_mapping
from flamingo.corpus.cli import load_build_config
from flamingo.corpus.config import BuildConfig
from flamingo.eval.tasks import TaskSpec, list_tasks, load_task
from flamingo.model.config import FlamingoConfig
from flamingo.quickstart.cli import _read_overrides
from flamingo.quickstart.run import QuickstartConfig
from flamingo.train.config import RunConfig, load_config

# ------------------------------------------------------------------------------------- the findings


def test_a_string_where_a_size_belongs_names_the_file_and_field(tmp_path: Path) -> None:
    data = model_dict()
    data["perceiver"]["depth"] = "6"  # once: '>' not supported between instances of 'str' and 'int'
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as err:
        FlamingoConfig.load(path)
    message = expect_one_line_error(err.value, path)
    assert message == f"{path}: field 'perceiver.depth': got '6' (a string); expected an integer from 1 to 64"
    assert (err.value.source, err.value.field) == (str(path), "perceiver.depth")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[1, 2]", "the top level must be a mapping of fields, got a list of 2 items"),
        ('{"lm": ["tiny-llama"]}', "field 'lm': got a list of 1 item; expected a mapping of fields"),
    ],
)
def test_a_list_where_a_mapping_belongs_names_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "config.json"  # once: 'list' object has no attribute 'items'
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as err:
        FlamingoConfig.load(path)
    expect_one_line_error(err.value, path)


def test_a_trillion_latents_are_refused_before_anything_is_built(tmp_path: Path) -> None:
    """``num_latents: 1e12`` once tried to allocate 256 TB; now the config is refused while it is read."""
    from flamingo.model.flamingo import Flamingo

    data = model_dict()
    data["perceiver"]["num_latents"] = 1_000_000_000_000
    (tmp_path / "config.json").write_text(json.dumps(data))
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        Flamingo.from_pretrained(str(tmp_path))
    assert time.perf_counter() - start < 2.0
    assert str(err.value) == (
        f"{tmp_path / 'config.json'}: field 'perceiver.num_latents': got 1000000000000; "
        "expected an integer from 1 to 4096"
    )


def test_the_cli_prints_the_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = model_dict()
    data["cross_attn"]["every_m"] = 2
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert main(["generate", "--model", str(tmp_path), "--prompt", "<image>x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (
        f"{tmp_path / 'config.json'}: field 'cross_attn.every_m': unknown field; did you mean 'every_n'?"
        in err
    )

    bad = tmp_path / "train.yaml"
    bad.write_text("train:\n  steps: -3\n")
    assert main(["train", "--config", str(bad), "logging.every=0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}: field 'train.steps': got -3" in err

    bad = tmp_path / "build.json"
    bad.write_text('{"fetch": {"threads": 1e9}}')
    assert (
        main(
            ["data", "build", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "o"), "--config", str(bad)]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and f"{bad}: field 'fetch.threads': got 1000000000.0; expected an integer" in err
    )

    bad = tmp_path / "qs.yaml"
    bad.write_text("pictures: {qa: [4, 10], blog: [1, 2]}\n")
    assert main(["quickstart", "--out", str(tmp_path / "qs"), "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}: pictures: unknown page kind(s) ['blog']" in err
    assert not (tmp_path / "qs").exists()  # refused before any stage started


def test_overrides_are_checked_like_the_file_and_named(tmp_path: Path) -> None:
    preset = ROOT / "configs" / "train" / "tiny-cpu.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(preset, ["data.sources.0.batch_size=1e9"])
    assert str(err.value) == (
        "override 'data.sources.0.batch_size=1e9': field 'data.sources.0.batch_size': got '1e9' (a string); "
        "expected an integer from 1 to 65536"
    )
    with pytest.raises(ConfigError, match=r"^override 'train\.lr=\[1,': the value is not valid YAML"):
        load_config(preset, ["train.lr=[1,"])
    assert load_config(preset, ["train.lr=1e-4"]).train.lr == 1e-4  # YAML 1.1 reads 1e-4 as a string


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("a.yaml", "train: [1,\n", r"not valid YAML \(line 2 column 1: "),
        ("a.json", '{"train": }', r"not valid JSON \(line 1 column 11: Expecting value\)"),
        ("a.json", "", "empty file"),
        ("a.yaml", "just text\n", "the top level must be a mapping of fields, got 'just text'"),
        ("a.json", '{"x": ' + "1" * 5000 + "}", "not valid JSON"),
        ("a.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as err:
        read_mapping(path)
    expect_one_line_error(err.value, path)
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text"):
        read_mapping(tmp_path / "latin1.yaml")


def test_yaml_aliases_cannot_blow_up_a_free_form_field(tmp_path: Path) -> None:
    """A 'billion laughs' document (10**9 values through aliases) is refused after a bounded number of values."""
    task = yaml.safe_load((ROOT / "src/flamingo/eval/tasks/coco.yaml").read_text())
    del task["train"]
    laughs = ["train:", "  a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    laughs += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(laughs) + "\n" + yaml.safe_dump(task))
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_task(path)
    assert time.perf_counter() - start < 5.0
    message = expect_one_line_error(err.value, path)
    assert "field 'train.a" in message and "more than 100000 values" in message


def test_surrogate_escapes_become_the_character_or_are_refused(tmp_path: Path) -> None:
    """YAML keeps ``"\\ud800\\udc00"`` as two code points where JSON reads one character: both read as the
    character (so the config saves and reloads as itself), and a lone surrogate, which is no text, is refused."""
    path = tmp_path / "build.yaml"
    path.write_text(json.dumps({"fetch": {"user_agent": "\ud800\udc00"}}))  # json.dumps writes the escapes
    config = load_build_config(str(path))
    assert config.fetch.user_agent == "\U00010000"
    assert BuildConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    path.write_text('fetch: {user_agent: "agent \\udfff"}\n')
    with pytest.raises(ConfigError, match="lone UTF-16 surrogate") as err:
        load_build_config(str(path))
    expect_one_line_error(err.value, path)
    preset = ROOT / "configs" / "train" / "tiny-cpu.yaml"
    with pytest.raises(ConfigError, match="lone UTF-16 surrogate") as err:
        load_config(preset, ['run_name="\\ud800"'])
    assert str(err.value).startswith("override 'run_name=\"\\ud800\"': ")
    laughs = ['a0: &a0 ["\\ud800\\udc00", x, x, x, x, x, x, x, x, x]']
    laughs += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    start = time.perf_counter()
    assert read_mapping_text("\n".join(laughs), tmp_path)["a0"][0] == "\U00010000"
    assert time.perf_counter() - start < 5.0  # aliases are walked once


def read_mapping_text(text: str, tmp_path: Path) -> dict:
    path = tmp_path / "text.yaml"
    path.write_text(text + "\n")
    return read_mapping(path)


def test_nested_values_are_bounded_and_typed() -> None:
    """Bounds reach into lists, tuples and mappings; the error path points at the item."""
    with pytest.raises(
        ConfigError, match=r"^x: field 'train\.betas\.1': got 1\.5; expected a number from 0 to 1$"
    ):
        from_mapping(RunConfig, {"train": {"betas": [0.9, 1.5]}}, "x")
    with pytest.raises(
        ConfigError, match=r"^x: field 'vision\.model_cfg\.vision_cfg\.layers\.2': got 1e\+300"
    ):
        FlamingoConfig.from_dict(
            {"lm": {"name_or_path": "m"}, "vision": {"model_cfg": {"vision_cfg": {"layers": [1, 2, 1e300]}}}},
            "x",
        )
    with pytest.raises(ConfigError, match=r"got true; expected a string .*quote them"):
        from_mapping(BuildConfig, {"filter": {"decontaminate_folders": [True]}}, "x")
    with pytest.raises(
        ConfigError, match=r"field 'train\.steps': got an integer of about 401 digits; expected"
    ):
        from_mapping(RunConfig, {"train": {"steps": 10**400}}, "x")
    with pytest.raises(ConfigError, match=r"field 'train\.lr': got nan; expected a finite number"):
        from_mapping(RunConfig, {"train": {"lr": float("nan")}}, "x")
    with pytest.raises(
        ConfigError, match=r"field 'lm\.trust_remote_code': got 'true' \(a string\); expected true or false"
    ):
        FlamingoConfig.from_dict({"lm": {"name_or_path": "m", "trust_remote_code": "true"}}, "x")


def test_post_init_checks_raise_config_errors_that_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "build.yaml"
    path.write_text("interleave:\n  no_image_policy: skip\n")
    with pytest.raises(ConfigError) as err:
        load_build_config(str(path))
    assert str(err.value) == f"{path}: interleave.no_image_policy is 'skip'; use drop or keep_text"
    path.write_text("data:\n  sources:\n    - {name: a}\n    - {name: a}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: data.sources names must be unique"):
        load_config(path)


def test_every_config_file_in_the_repository_loads() -> None:
    for preset in sorted((ROOT / "configs" / "train").glob("*.yaml")):
        assert isinstance(load_config(preset), RunConfig)
    for name in list_tasks():
        assert load_task(name).name == name
    for task in sorted((ROOT / "src" / "flamingo" / "quickstart" / "tasks").glob("*.yaml")):
        assert isinstance(load_task(task), TaskSpec)
    for overrides in sorted((ROOT / "configs" / "quickstart").glob("*.yaml")):
        QuickstartConfig().updated(_read_overrides(str(overrides)), source=str(overrides))


def bounded_fields(cls: type, prefix: str = "") -> dict[str, str]:
    """``{dotted path: bounds in words}`` of every bounded field under ``cls`` (``N`` for list items)."""
    import typing

    found = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, path = hints[f.name], f"{prefix}{f.name}"
        inner = [a for a in (kind, *typing.get_args(kind)) if dataclasses.is_dataclass(a)]
        if inner:
            found |= bounded_fields(inner[0], f"{path}.N." if typing.get_origin(kind) is list else f"{path}.")
        elif bounds_text(f.metadata):
            found[path] = bounds_text(f.metadata)
    return found


def test_the_documented_bounds_are_the_declared_ones() -> None:
    rows = re.findall(
        r"^\| `([^`]+)`[^|]*\| ([^|]+) \|$", (ROOT / "docs" / "configuration.md").read_text(), re.M
    )
    documented = {}
    for path, limits in rows:
        documented.setdefault(path, []).append(limits)
    for cls in (FlamingoConfig, RunConfig, BuildConfig, TaskSpec, QuickstartConfig):
        for path, limits in bounded_fields(cls).items():
            assert any(d.startswith(limits) for d in documented.get(path, [])), (cls.__name__, path, limits)
