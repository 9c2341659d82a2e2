"""Text quality stage: the Gopher quality and repetition rules and the C4 rules, from datatrove.

Each rule is datatrove's filter with the thresholds of ``TextConfig``; a document that fails is dropped under
the rule's own reason (``gopher_short_doc``, ``dup_line_frac``, ``curly_bracket``, ...; the C4 page-size rule is
``c4_too_few_sentences`` so that it is not confused with the read stage's ``too_few_sentences``). The rules
read the document's prose, one text entry per line; code entries are left out, as C4's curly-bracket rule and
Gopher's symbol ratios would otherwise drop every page with a code sample. C4's line rules (terminal
punctuation, "javascript", cookie notices) only decide which lines count towards its sentence minimum: they do
not edit the document, whose headings and captions C4 would cut, and whose image positions would move.

datatrove splits words with spaCy's blank pipelines (tokenizer rules shipped with spaCy: nothing is
downloaded); the first document pays spaCy's import, a few seconds.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from flamingo.corpus.config import TextConfig
from flamingo.corpus.document import WebDocument, partition


def prose(doc: WebDocument) -> list[str]:
    """The document's text entries that are not code (``metadata["code_entries"]`` lists the code ones)."""
    code = set(doc.metadata.get("code_entries", ()))
    return [s for i, s in enumerate(doc.sentences) if i not in code]


@lru_cache(maxsize=8)
def _filters(config_key: tuple[Any, ...]) -> list[Any]:
    """datatrove's filters for one set of thresholds (built once per process and config)."""
    from datatrove.pipeline.filters.c4_filters import C4QualityFilter
    from datatrove.pipeline.filters.gopher_quality_filter import GopherQualityFilter
    from datatrove.pipeline.filters.gopher_repetition_filter import GopherRepetitionFilter

    config = TextConfig(**dict(config_key))
    filters: list[Any] = []
    if config.gopher_quality:
        filters.append(
            GopherQualityFilter(
                min_doc_words=config.gopher_min_words,
                max_doc_words=config.gopher_max_words,
                min_avg_word_length=config.gopher_min_avg_word_length,  # type: ignore[arg-type]
                max_avg_word_length=config.gopher_max_avg_word_length,  # type: ignore[arg-type]
                max_symbol_word_ratio=config.gopher_max_symbol_word_ratio,
                max_bullet_lines_ratio=config.gopher_max_bullet_lines_ratio,
                max_ellipsis_lines_ratio=config.gopher_max_ellipsis_lines_ratio,
                max_non_alpha_words_ratio=config.gopher_min_alpha_words_ratio,
                min_stop_words=config.gopher_min_stop_words,
                language="en",
            )
        )
    if config.gopher_repetition:
        filters.append(
            GopherRepetitionFilter(
                dup_line_frac=config.gopher_dup_line_frac,
                dup_line_char_frac=config.gopher_dup_line_char_frac,
                language="en",
            )
        )
    if config.c4:
        filters.append(C4QualityFilter(min_num_sentences=config.c4_min_sentences, language="en"))
    return filters


def _key(config: TextConfig) -> tuple[Any, ...]:
    return tuple(
        (name, tuple(value) if isinstance(value, list) else value) for name, value in vars(config).items()
    )


def quality_reason(doc: WebDocument, config: TextConfig) -> str | None:
    """The first quality rule ``doc`` fails (its reason), or None when it passes them all or is not checked."""
    if config.quality_languages and doc.metadata.get("language") not in config.quality_languages:
        return None
    filters = _filters(_key(config))
    if not filters:
        return None
    from datatrove.data import Document

    text = "\n".join(prose(doc))
    if not text.strip():
        return "no_prose"
    for rule in filters:
        verdict = rule.filter(Document(text=text, id=doc.id))
        if verdict is True:
            continue
        reason = verdict[1] if isinstance(verdict, tuple) else type(rule).__name__
        return "c4_too_few_sentences" if reason == "too_few_sentences" else str(reason)
    return None


def filter_quality(
    docs: list[WebDocument], config: TextConfig
) -> tuple[list[WebDocument], list[tuple[WebDocument, str]]]:
    """The documents that pass every enabled rule, and the others with the first rule they fail."""
    return partition(docs, lambda doc: quality_reason(doc, config))
