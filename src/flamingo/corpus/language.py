"""Language identification (py3langid, its model ships in the wheel: no download) and the language stage.

The read stage identifies each page's language from its prose (code left out), because the sentence splitter
needs it; it stores ``language`` and ``language_score`` (a probability) in the document's metadata. The
language stage then keeps the documents in ``text.languages`` whose score reaches ``text.min_language_score``
and names the reason for each one it drops: ``wrong_language`` or ``low_language_score``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from flamingo.corpus.config import TextConfig
from flamingo.corpus.document import WebDocument, partition

# The identifier's time grows with the text; a page's first characters say its language as well as all of it.
_MAX_CHARS = 20_000


@lru_cache(maxsize=1)
def _identifier() -> Any:
    """The py3langid model with normalised probabilities (loaded once per process, about a second)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify_language(text: str) -> tuple[str, float]:
    """The ISO 639-1 code of ``text``'s language and its probability; ``("", 0.0)`` for text with no letters."""
    sample = text[:_MAX_CHARS]
    if not any(ch.isalpha() for ch in sample):
        return "", 0.0
    language, score = _identifier().classify(sample)
    return str(language), float(score)


def language_reason(doc: WebDocument, config: TextConfig) -> str | None:
    """Why the language stage drops ``doc`` (``wrong_language``, ``low_language_score``), or None to keep it."""
    if not config.languages:
        return None
    if doc.metadata.get("language") not in config.languages:
        return "wrong_language"
    if float(doc.metadata.get("language_score", 0.0)) < config.min_language_score:
        return "low_language_score"
    return None


def filter_language(
    docs: list[WebDocument], config: TextConfig
) -> tuple[list[WebDocument], list[tuple[WebDocument, str]]]:
    """The documents kept, and the ones dropped with their reasons, in input order."""
    return partition(docs, lambda doc: language_reason(doc, config))
