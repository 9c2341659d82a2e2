"""Property-based tests of the strict config loader: arbitrary JSON values (any type, nesting, nulls, huge
numbers, odd Unicode) put into any field of every config kind either load into a valid config or fail with a
one-line ConfigError naming the file and the field, never with another exception."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from config_support import ROOT, expect_one_line_error, model_dict

from flamingo.configs import ConfigError, one_line
from flamingo.corpus.cli import load_build_config
from flamingo.corpus.config import BuildConfig
from flamingo.eval.tasks import TaskSpec, list_tasks, load_task
from flamingo.model.config import FlamingoConfig
from flamingo.quickstart.cli import _read_overrides
from flamingo.quickstart.run import QuickstartConfig
from flamingo.train.config import RunConfig, load_config

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ODD_TEXT = [
    "",
    " ",
    "\u2028",
    "\x00",
    "\ud800",
    "é\u0301",
    "1e3",
    "yes",
    "null",
    "~",
    "- a",
    "{x: 1}",
    "\U0001f600" * 3,
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([0, -1, 1, 2**31, 2**63, 10**12, -(10**30), 10**400])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(ODD_TEXT)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.sampled_from(ODD_TEXT), inner, max_size=4)
    ),
    max_leaves=12,
)


def field_paths(cls: type, prefix: tuple = ()) -> list[tuple]:
    """Every dotted path of fields, into nested dataclasses (and the first item of lists of them)."""
    paths = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = (*prefix, f.name)
        paths.append(path)
        kind = hints[f.name]
        args = typing.get_args(kind)
        if dataclasses.is_dataclass(kind):
            paths += field_paths(kind, path)
        elif typing.get_origin(kind) is list and args and dataclasses.is_dataclass(args[0]):
            paths += field_paths(args[0], (*path, 0))
        elif any(dataclasses.is_dataclass(a) for a in args):  # X | None
            paths += field_paths(next(a for a in args if dataclasses.is_dataclass(a)), path)
    return paths


def data_paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path of keys and list indices present in ``data``."""
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in [(*prefix, k), *data_paths(v, (*prefix, k))]]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in [(*prefix, i), *data_paths(v, (*prefix, i))]]
    return []


@st.composite
def mutated(draw: Any, base: dict[str, Any], cls: type, skip: tuple[str, ...] = ()) -> tuple[dict, tuple]:
    """``base`` with an arbitrary value put at a field path (or an unknown key) of ``cls``."""
    paths = sorted({*field_paths(cls), *data_paths(base)} - {(s,) for s in skip}, key=str)
    path = draw(st.sampled_from(paths))
    if draw(st.integers(0, 9)) == 0:
        path = (*path[:-1], draw(st.text(min_size=1, max_size=8) | st.sampled_from(ODD_TEXT)))
    value = draw(json_values)
    data = json.loads(json.dumps(base))
    node = data
    for key in path[:-1]:
        if isinstance(node, list):
            if not isinstance(key, int) or key >= len(node):
                break
            node = node[key]
        elif isinstance(node, dict):
            node = node.setdefault(key, {})
        else:
            break
    else:
        in_list = isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node)
        if isinstance(node, dict) or in_list:
            node[path[-1]] = value
    return data, path


def check(load: Any, path: Path, cls: type) -> Any:
    """The outcome of one load: a ``cls``, or a one-line ConfigError naming ``path`` (and a field)."""
    try:
        config = load()
    except ConfigError as err:
        message = expect_one_line_error(err, path)
        file_level = any(s in message for s in ("not valid", "top level", "nested too deeply", "empty file"))
        assert file_level or err.field is not None, message
        if err.field:
            assert err.field in message, message
        return None
    assert isinstance(config, cls)
    return config


PROPERTY = settings(
    max_examples=120,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@PROPERTY
@given(case=mutated(model_dict(), FlamingoConfig))
def test_any_value_in_a_model_config(tmp_path: Path, case: tuple[dict, tuple]) -> None:
    data, _ = case
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    config = check(lambda: FlamingoConfig.load(path), path, FlamingoConfig)
    if config is not None:  # what loads saves and loads again unchanged
        config.save(tmp_path / "again.json")
        assert FlamingoConfig.load(tmp_path / "again.json") == config


TINY_TRAIN = yaml.safe_load((ROOT / "configs" / "train" / "tiny-cpu.yaml").read_text())


@PROPERTY
@given(case=mutated(TINY_TRAIN, RunConfig))
def test_any_value_in_a_training_config(tmp_path: Path, case: tuple[dict, tuple]) -> None:
    data, _ = case
    path = tmp_path / "train.yaml"
    path.write_text(json.dumps(data))
    config = check(lambda: load_config(path), path, RunConfig)
    if config is not None:
        config.save(tmp_path / "again.yaml")
        assert load_config(tmp_path / "again.yaml") == config


@PROPERTY
@given(data=st.data())
def test_any_value_in_a_training_override(tmp_path: Path, data: Any) -> None:
    paths = sorted({*field_paths(RunConfig), *data_paths(TINY_TRAIN)}, key=str)
    key = ".".join(map(str, data.draw(st.sampled_from(paths))))
    override = f"{key}={json.dumps(data.draw(json_values))}"
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(TINY_TRAIN))
    try:
        config = load_config(path, [override])
    except ConfigError as err:
        message = str(err)
        assert len(message.splitlines()) == 1 and message.isprintable(), message
        assert message.startswith((one_line(f"override '{override}'"), f"{path} with override")), message
        return
    assert isinstance(config, RunConfig)


@PROPERTY
@given(case=mutated(BuildConfig().to_dict(), BuildConfig))
def test_any_value_in_a_builder_config(tmp_path: Path, case: tuple[dict, tuple]) -> None:
    data, _ = case
    path = tmp_path / "build.yaml"
    path.write_text(json.dumps(data))
    config = check(lambda: load_build_config(str(path)), path, BuildConfig)
    if config is not None:
        assert BuildConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


TASKS = {
    name: yaml.safe_load((ROOT / "src" / "flamingo" / "eval" / "tasks" / f"{name}.yaml").read_text())
    for name in list_tasks()
}


@PROPERTY
@given(data=st.data(), name=st.sampled_from(sorted(TASKS)))
def test_any_value_in_an_evaluation_task(tmp_path: Path, data: Any, name: str) -> None:
    task, _ = data.draw(mutated(TASKS[name], TaskSpec, skip=("source",)))
    path = tmp_path / "task.yaml"
    path.write_text(json.dumps(task))
    check(lambda: load_task(path), path, TaskSpec)


QUICKSTART_BASE = yaml.safe_load((ROOT / "configs" / "quickstart" / "name-questions.yaml").read_text())


@PROPERTY
@given(case=mutated(QUICKSTART_BASE, QuickstartConfig), suffix=st.sampled_from([".yaml", ".json"]))
def test_any_value_in_quickstart_overrides(tmp_path: Path, case: tuple[dict, tuple], suffix: str) -> None:
    data, _ = case
    path = tmp_path / f"qs{suffix}"
    path.write_text(json.dumps(data))
    config = check(
        lambda: QuickstartConfig.small().updated(_read_overrides(str(path)), source=str(path)),
        path,
        QuickstartConfig,
    )
    if config is not None:
        assert QuickstartConfig().updated(dataclasses.asdict(config)) == config
