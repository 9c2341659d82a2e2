"""Whether a language model needs code from its own repository, and refusing it unless the caller allows it.

Hugging Face models can ship Python files that ``transformers`` imports when told ``trust_remote_code=True``.
That permission comes only from the caller (``--trust-remote-code`` or ``trust_remote_code=True``), never from
a file: a checkpoint's ``config.json`` saying ``"trust_remote_code": true`` only tells that the model needs the
permission. Everything here reads JSON; nothing imports a model's code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flamingo.errors import FlamingoError

FLAG_HINT = "pass --trust-remote-code (trust_remote_code=True in Python) if you trust it"


class RemoteCodeError(FlamingoError, ValueError):
    """A model needs code from its repository and the caller did not allow it."""


def refuse(where: str, what: str, reason: str) -> RemoteCodeError:
    """The one-line error for ``what`` (a model) that needs remote code the caller did not allow."""
    return RemoteCodeError(
        f"{where}: {what} needs code from the model repository to run ({reason}); {FLAG_HINT}"
    )


def _read_json(name_or_path: str, filename: str, revision: str | None) -> dict[str, Any]:
    """``filename`` of a local directory or hub repository as a dict; {} when it is absent or unreadable.

    A hub file that cannot be fetched (offline, private) counts as absent: loading then passes
    ``trust_remote_code=False`` to ``transformers``, which refuses remote code by itself.
    """
    local = Path(name_or_path)
    if local.is_dir():
        path = local / filename
        if not path.is_file():
            return {}
    elif str(name_or_path).startswith((".", "/")):
        return {}
    else:
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(str(name_or_path), filename, revision=revision))
        except Exception:  # any hub failure: decided by transformers itself, with remote code off
            return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _auto_map_entry(data: dict[str, Any], key: str) -> Any:
    auto_map = data.get("auto_map")
    if isinstance(auto_map, dict):
        return auto_map.get(key)
    if isinstance(auto_map, (list, tuple)) and key == "AutoTokenizer":  # the old tokenizer layout
        return auto_map
    return None


def lm_remote_code_reason(lm: str, tokenizer: str | None = None, revision: str | None = None) -> str | None:
    """Why loading the causal LM ``lm`` (and its tokenizer) would need the repository's own code, or None.

    The rule is ``transformers``': a config whose ``auto_map`` names a class for ``AutoConfig``,
    ``AutoModelForCausalLM`` or ``AutoTokenizer`` that ``transformers`` (or a class this project registered) has
    no built-in equivalent for. A built-in equivalent is used instead of the repository's code.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = _read_json(lm, "config.json", revision)
    model_type = config.get("model_type")
    config_class = None
    if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
        config_class = CONFIG_MAPPING[model_type]  # a lazy mapping: .get() would not see its entries
    if _auto_map_entry(config, "AutoConfig") and config_class is None:
        return f"its config.json has model_type {model_type!r}, which only that code defines"
    if _auto_map_entry(config, "AutoModelForCausalLM") and (
        config_class is None or config_class not in MODEL_FOR_CAUSAL_LM_MAPPING
    ):
        return f"its config.json maps AutoModelForCausalLM to {_auto_map_entry(config, 'AutoModelForCausalLM')!r}"
    tok_config = _read_json(tokenizer or lm, "tokenizer_config.json", revision)
    remote_tokenizer = _auto_map_entry(tok_config, "AutoTokenizer") or _auto_map_entry(
        config, "AutoTokenizer"
    )
    if remote_tokenizer and not _builtin_tokenizer(tok_config, config_class):
        return f"its tokenizer maps AutoTokenizer to {remote_tokenizer!r}"
    return None


def _builtin_tokenizer(tok_config: dict[str, Any], config_class: Any) -> bool:
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING, tokenizer_class_from_name

    name = tok_config.get("tokenizer_class")
    if isinstance(name, str) and tokenizer_class_from_name(name) is not None:
        return True
    return config_class is not None and config_class in TOKENIZER_MAPPING
