"""Model cards and hub uploads for checkpoint directories.

A checkpoint directory gets a ``README.md`` in the Hugging Face model-card format: YAML front matter
(``library_name``, ``base_model``, ``license``, ``tags``, ``pipeline_tag``) and a body with the architecture, how
to load the model, and the training configuration and evaluation results when they are known. A card a person
wrote (one without this module's marker) is never overwritten.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from flamingo.model.config import FlamingoConfig

CARD_NAME = "README.md"
DEFAULT_TITLE = "Flamingo checkpoint"
"""The card's title when it knows no name for the model."""
_MARKER = "<!-- model card written by flamingo-vlm; edit freely: it is then kept as it is -->"


def _hub_id(value: str | None) -> str | None:
    """``value`` when it names a hub repository (``org/name``), else None (local paths, open_clip tags)."""
    if not value:
        return None
    value = value.removeprefix("hf-hub:")
    if value.startswith((".", "/", "~")) or Path(value).exists() or value.count("/") != 1:
        return None
    return value


def card_metadata(config: FlamingoConfig, license: str | None = None) -> dict[str, Any]:
    """The YAML front matter of the card: what the hub indexes."""
    bases = [_hub_id(config.lm.name_or_path)]
    if config.vision.kind == "hf":
        bases.append(_hub_id(config.vision.name))
    else:
        bases.append(_hub_id(config.vision.pretrained))
    meta: dict[str, Any] = {
        "library_name": "flamingo-vlm",
        "license": license or "other",
        "pipeline_tag": "image-text-to-text",
        "tags": ["flamingo", "vision-language", "multimodal", "few-shot", "interleaved"],
    }
    base_models = [b for b in bases if b]
    if base_models:
        meta["base_model"] = base_models
    return meta


def _vision_line(config: FlamingoConfig) -> str:
    vision = config.vision
    if vision.kind == "hf":
        return f"Hugging Face vision tower `{vision.name}`"
    weights = (
        Path(vision.pretrained).name if vision.pretrained and "/" in vision.pretrained else vision.pretrained
    )
    return f"open_clip `{vision.name}` (weights `{weights}`, legacy tokens: {vision.legacy_tokens})"


def _evaluation_table(evaluation: list[dict[str, Any]]) -> list[str]:
    shots = sorted({int(s) for res in evaluation for s in res.get("scores", {})})
    lines = ["| task | metric | " + " | ".join(f"{s}-shot" for s in shots) + " |"]
    lines.append("|---|---|" + "---|" * len(shots))
    for res in evaluation:
        cells = []
        for s in shots:
            score = res.get("scores", {}).get(str(s))
            cells.append("-" if score is None else f"{score['mean']:.2f}")
        lines.append(f"| {res.get('task', '?')} | {res.get('metric', '?')} | " + " | ".join(cells) + " |")
    return lines


def model_card(
    config: FlamingoConfig,
    repo_id: str | None = None,
    license: str | None = None,
    training: dict[str, Any] | None = None,
    evaluation: list[dict[str, Any]] | None = None,
    name: str | None = None,
) -> str:
    """The text of ``README.md`` for a checkpoint of ``config``.

    ``training`` is the run configuration (e.g. the trainer's ``config.yaml``, as a dict); ``evaluation`` holds
    ``results.json`` dicts of ``flamingo eval``; ``name`` (front matter ``model_name`` and the card's title) is
    what ``flamingo serve`` calls the model.
    """
    meta = card_metadata(config, license)
    if name:
        meta["model_name"] = name
    where = repo_id or "path/to/this/folder"
    lm = config.lm
    xattn, perceiver = config.cross_attn, config.perceiver
    body = [
        _MARKER,
        "",
        f"# {name or (repo_id.split('/')[-1] if repo_id else DEFAULT_TITLE)}",
        "",
        "A Flamingo-style vision-language model made with [flamingo-vlm](https://pypi.org/project/flamingo-vlm/): "
        "a frozen language model and a frozen vision encoder joined by a trained Perceiver Resampler and gated "
        "cross-attention blocks. It reads text interleaved with images and writes text.",
        "",
        "## Architecture",
        "",
        f"- Language model: `{lm.name_or_path}`" + (f" (tokenizer `{lm.tokenizer}`)" if lm.tokenizer else ""),
        f"- Vision encoder: {_vision_line(config)}",
        f"- Perceiver Resampler: {perceiver.depth} layers, {perceiver.num_latents} latents, "
        f"{perceiver.heads} heads of {perceiver.dim_head}",
        f"- Gated cross-attention before every {xattn.every_n} decoder layer(s): {xattn.heads} heads of "
        f"{xattn.dim_head}, media policy `{xattn.media_policy}`",
        f"- Backbones stored in this repository: {'yes' if config.backbones_included else 'no'} (otherwise "
        "they are downloaded from their own repositories)",
        "",
        "## How to load it",
        "",
        "```python",
        "from flamingo.model.flamingo import Flamingo",
        "from flamingo.processing import FlamingoProcessor",
        "",
        f'model = Flamingo.from_pretrained("{where}")',
        "processor = FlamingoProcessor.from_model(model)",
        'batch = processor([("<image>Output:", [image])])  # image: a PIL image',
        'out = model.generate(batch["images"], batch["input_ids"], batch["attention_mask"], max_new_tokens=20)',
        'print(processor.decode(out, batch["input_ids"].shape[1])[0])',
        "```",
        "",
        f'Or from the command line: `flamingo generate --model {where} --image cat.jpg --prompt "<image>Output:"`.',
        "",
    ]
    if training:
        body += ["## Training", "", "```yaml", yaml.safe_dump(training, sort_keys=False).rstrip(), "```", ""]
    if evaluation:
        body += ["## Evaluation", "", "Mean over seeds, per number of demonstrations (`flamingo eval`).", ""]
        body += [*_evaluation_table(evaluation), ""]
    body += [
        "## License",
        "",
        "The adapter weights are released under the license above; the base language model and vision encoder "
        "keep their own licenses.",
        "",
    ]
    front = yaml.safe_dump(meta, sort_keys=False).rstrip()
    return f"---\n{front}\n---\n\n" + "\n".join(body)


def parse_card_metadata(text: str) -> dict[str, Any]:
    """The YAML front matter of a model card (between the leading ``---`` lines)."""
    if not text.startswith("---\n"):
        raise ValueError("model card: no YAML front matter (the text must start with a '---' line)")
    end = text.index("\n---\n", 4)
    return yaml.safe_load(text[4:end]) or {}


def card_model_name(directory: str | Path) -> str | None:
    """The model's name from the card in ``directory``: front matter ``model_name``, else the card's title
    (its first ``# `` line) unless it is the generic :data:`DEFAULT_TITLE`; None without a card or a name."""
    path = Path(directory) / CARD_NAME
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    try:
        name = parse_card_metadata(text).get("model_name")
    except (ValueError, yaml.YAMLError, AttributeError):  # no or broken front matter: the title may still say
        name = None
    if isinstance(name, str) and name.strip():
        return name.strip()
    for line in text.splitlines():
        if line.startswith("# "):
            title = line[2:].strip()
            return title if title and title != DEFAULT_TITLE else None
    return None


def write_model_card(directory: str | Path, config: FlamingoConfig, **card: Any) -> Path | None:
    """Write ``README.md`` into ``directory`` unless a card written by a person is there (returns None then)."""
    path = Path(directory) / CARD_NAME
    if path.is_file() and _MARKER not in path.read_text(encoding="utf-8"):
        return None
    path.write_text(model_card(config, **card), encoding="utf-8")
    return path


def read_evaluation(paths: list[str | Path]) -> list[dict[str, Any]]:
    """``results.json`` dicts from files or from folders holding ``<task>/results.json``."""
    out = []
    for item in paths:
        item = Path(item)
        files = (
            [item]
            if item.is_file()
            else sorted(item.glob("*/results.json")) + sorted(item.glob("results.json"))
        )
        if not files:
            raise FileNotFoundError(f"{item}: no results.json here or in its task folders")
        out += [json.loads(f.read_text(encoding="utf-8")) for f in files]
    return out


def push_to_hub(
    directory: str | Path,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    api: Any | None = None,
) -> Any:
    """Create ``repo_id`` (if needed) and upload the checkpoint ``directory`` as one commit.

    Follows huggingface_hub: ``HfApi.create_repo(exist_ok=True)`` then ``HfApi.upload_folder``; returns the
    commit information ``upload_folder`` returns. A ``revision`` (branch) that does not exist yet is created from
    the default branch.
    """
    from huggingface_hub import HfApi

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: no config.json; push a directory written by save_pretrained")
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=str(directory),
        revision=revision,
        commit_message=commit_message or "Upload Flamingo checkpoint (flamingo-vlm)",
    )
