"""The YAML task registry: shipped tasks, user tasks, and errors that name the file, the field and the fix."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import yaml

from flamingo.eval.tasks import TaskSpecError, list_tasks, load_task
from flamingo.prompts import OPENFLAMINGO, PromptTemplate


def resources_text(name: str) -> str:
    return resources.files("flamingo.eval.tasks").joinpath(name).read_text()


SHIPPED = ["coco", "flickr30k", "hateful_memes", "imagenet", "okvqa", "textvqa", "vizwiz", "vqav2"]


def test_all_shipped_tasks_load():
    assert list_tasks() == SHIPPED
    for name in SHIPPED:
        assert load_task(name).name == name


def test_shipped_tasks_follow_the_openflamingo_protocol():
    coco, vqa, hm = (load_task(n).with_prompts(OPENFLAMINGO) for n in ("coco", "vqav2", "hateful_memes"))
    assert coco.prompt == PromptTemplate("{image}Output:{caption}{eoc}\n", "{image}Output:")
    assert vqa.prompt.query == "{image}Question:{question} Short answer:"
    assert (coco.decoding.max_new_tokens, vqa.decoding.max_new_tokens) == (20, 5)
    assert load_task("textvqa").decoding.max_new_tokens == 10
    assert all(load_task(n).decoding.num_beams == 3 for n in ("coco", "okvqa", "vizwiz"))
    assert coco.decoding.stop == ()  # nothing besides the model's end of chunk
    assert hm.class_names == ("no", "yes") and hm.positive_class == "yes"
    assert load_task("okvqa").postprocess == "okvqa"
    assert coco.shots == (0, 4, 8, 16, 32) and coco.query_set_size == 2048 and coco.zero_shot_text_demos == 2


def _user_task(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(resources_text("vizwiz.yaml"))
    data.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del data[key]
    path = tmp_path / "mytask.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_user_task_is_a_yaml_file(tmp_path):
    task = load_task(_user_task(tmp_path, name="my_vqa", shots=[0, 2]))
    assert task.name == "my_vqa" and task.shots == (0, 2) and task.source.endswith("mytask.yaml")


@pytest.mark.parametrize(
    ("changes", "field", "fix"),
    [
        ({"metric": None}, "metric", "add 'metric:'"),
        ({"metric": "vqa_acc"}, "metric", "did you mean 'vqa_accuracy'"),
        ({"reader": "vizwizz"}, "reader", "did you mean 'vizwiz'"),
        ({"postproces": "vqa"}, "postproces", "did you mean 'postprocess'"),
        ({"test": {"annotation": "x.json", "images": "val"}}, "test", "its options are"),
        (
            {"prompt": {"demo": "Q:{question} A:{answer}", "query": "{image}Q:{question}"}},
            "prompt.demo",
            "put one {image}",
        ),
        ({"prompt": {"demo": "{image}{answer}", "query": "{image}{answer}"}}, "prompt.query", "use only"),
        ({"prompt": "captions"}, "prompt", "did you mean 'caption'"),
        ({"decoding": None}, "decoding", "num_beams"),
        ({"task_type": "ranking"}, "task_type", "generation"),
        ({"shots": [4, -1]}, "shots.1", "shots: [0, 4, 8]"),
        ({"shots": 4}, "shots", "shots: [0, 4, 8]"),
        ({"query_set_size": "big"}, "query_set_size", "integer"),
    ],
)
def test_bad_task_files_name_the_file_the_field_and_the_fix(tmp_path, changes, field, fix):
    path = _user_task(tmp_path, **changes)
    with pytest.raises(TaskSpecError) as err:
        load_task(path)
    message = str(err.value)
    assert str(path) in message and f"field '{field}'" in message and fix in message


def test_unquoted_yes_no_class_names_are_caught(tmp_path):
    path = tmp_path / "hm.yaml"
    text = resources_text("hateful_memes.yaml").replace(
        'class_names: ["no", "yes"]', "class_names: [no, yes]"
    )
    path.write_text(text)
    with pytest.raises(TaskSpecError, match="quote them"):
        load_task(path)


def test_unknown_task_name_lists_the_shipped_ones():
    with pytest.raises(KeyError, match="coco"):
        load_task("cocoo")


def test_class_names_from_the_shipped_list_or_a_file(tmp_path):
    data = yaml.safe_load(resources_text("imagenet.yaml"))
    assert data["class_names"] == "from_data"  # a subset ranks its own classes
    clip = tmp_path / "clip.yaml"
    clip.write_text(yaml.safe_dump(data | {"class_names": "imagenet_clip"}))
    assert load_task(clip).class_name_list()[0] == "tench"
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    data["class_names"] = "names.txt"
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_task(path).class_name_list(str(tmp_path)) == ["cat", "dog"]


def test_a_user_task_writes_its_template_out_or_names_the_models(tmp_path):
    """A written-out template is the task's own; a named one is the evaluated model's (its checkpoint's)."""
    own = {"demo": "{image}Q: {question} A: {answer}{eoc}", "query": "{image}Q: {question} A:"}
    task = load_task(_user_task(tmp_path, prompt=own))
    assert task.with_prompts(OPENFLAMINGO).prompt == PromptTemplate(**own)
    named = load_task(_user_task(tmp_path, prompt="vqa"))
    assert named.prompt == "vqa" and named.with_prompts(OPENFLAMINGO).prompt == OPENFLAMINGO.vqa


def test_flamingo_eval_prompts_option_reads_a_name_or_a_json_file(tmp_path):
    """``--prompts``: the benchmark's templates by name, or a ``prompts`` section (a checkpoint's config.json)."""
    import json

    from flamingo.prompts import PromptError, load_prompt_config

    assert load_prompt_config("openflamingo") == OPENFLAMINGO
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"prompts": {"classify": {"demo": "{image}{label}{eoc}", "query": "{image}"}}})
    )
    loaded = load_prompt_config(config)
    assert (
        loaded.classify == PromptTemplate("{image}{label}{eoc}", "{image}") and loaded.vqa == OPENFLAMINGO.vqa
    )
    config.write_text(json.dumps({"prompts": {"clasify": {"demo": "{image}", "query": "{image}"}}}))
    with pytest.raises(PromptError, match="unknown templates"):
        load_prompt_config(config)
