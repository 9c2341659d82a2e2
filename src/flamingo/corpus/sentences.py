"""Rule-based sentence splitting (English), with no model or data download.

A boundary is a run of ``.``, ``!``, ``?`` or an ellipsis, optionally closed by quotes or brackets,
then whitespace. It is NOT a boundary when

- the next word starts with a lower-case letter ("Wait... what?", "Yahoo! is");
- the period ends a title or a Latin abbreviation that never ends a sentence ("Dr.", "e.g.", "cf.");
- the period ends a single initial ("J. K. Rowling");
- the period ends an abbreviation that may end a sentence ("etc.", "Inc.", "U.S.") and the next
  word is not capitalised, or the period ends a month abbreviation followed by a number ("Jan. 5").

Decimals ("3.5"), URLs and file names have no whitespace after their periods and are never split.
Blank lines are hard boundaries; single newlines are spaces.

``split_sentences(text, language, splitter)`` can use pySBD instead, which knows the punctuation of other
languages (Japanese and Chinese sentences end in "。" with no space after it). Whichever splits, a piece that
is only a number or a label ("6.5.", "Figure 4.1.") is joined to the sentence after it: it is the start of a
numbered heading or a caption, not a sentence.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Abbreviations after which a sentence (almost) never ends.
_NEVER_END = _words(
    "mr mrs ms mx dr prof sr jr st mt vs v e.g i.e cf fig figs no nos vol vols pp approx ca incl esp "
    "dept gen gov sgt capt col lt rev hon op al viz sen rep gov ft"
)
# Abbreviations that may end a sentence: split only before a capitalised word.
_MAY_END = _words("etc inc ltd co corp bros llc plc jan feb mar apr jun jul aug sep sept oct nov dec")
_MONTHS = _words("jan feb mar apr jun jul aug sep sept oct nov dec")

_OPENERS = "\"'“‘([{«"
_BOUNDARY = re.compile(r"(\.{2,}|…|[.!?]+)([\"'”’)\]}»]*)(\s+)")
_PREV_WORD = re.compile(r"(\S+)$")
_DOTTED = re.compile(r"(?:[a-z]\.)+[a-z]")


def _next_start(text: str, pos: int) -> str:
    """The first character of the next word, skipping opening quotes and brackets ("" at the end)."""
    while pos < len(text) and text[pos] in _OPENERS:
        pos += 1
    return text[pos] if pos < len(text) else ""


def _period_ends_sentence(word: str, nxt: str) -> bool:
    """Whether a single period after ``word`` ends a sentence, given the next word's first character."""
    word = word.lstrip(_OPENERS).lower()
    if word in _NEVER_END:
        return False
    if len(word) == 1 and word.isalpha():
        return False  # an initial, as in "J. K. Rowling"
    if word in _MONTHS and nxt.isdigit():
        return False
    if word in _MAY_END or _DOTTED.fullmatch(word):
        return nxt.isupper()
    return nxt.isupper() or nxt.isdigit() or nxt in _OPENERS


def _is_boundary(text: str, match: re.Match[str]) -> bool:
    punct = match.group(1)
    nxt = _next_start(text, match.end())
    if not nxt:
        return True
    if nxt.islower():
        return False
    if punct == ".":
        prev = _PREV_WORD.search(text, 0, match.start())
        word = prev.group(1) if prev else ""
        return _period_ends_sentence(word, nxt)
    if punct.startswith("..") or punct == "…":
        return nxt.isupper()
    return True


def _split_paragraph(text: str) -> list[str]:
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        if _is_boundary(text, match):
            end = match.start(3)
            sentences.append(text[start:end].strip())
            start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


# Languages pySBD 0.3.4 has rules for (ISO 639-1).
PYSBD_LANGUAGES = _words("en hi mr zh es am ar hy bg ur ru pl fa nl da fr my el it ja de kk sk")
# A label that numbers what follows it: "6.5.", "IV.", "Figure 4.1.", "Table 2:", "Example 3.".
_LABEL = re.compile(
    r"(?:(?i:figure|fig\.|table|example|listing|chapter|section|appendix|part|step|exercise)\s+)?"
    r"(?:\d+(?:[.-]\d+)*|[A-Z](?:[.-]\d+)*|[IVXLC]+)[.:]?"
)


@lru_cache(maxsize=32)
def _pysbd_segmenter(language: str) -> Any:
    import pysbd

    return pysbd.Segmenter(language=language, clean=False)


def _join_labels(sentences: list[str]) -> list[str]:
    """Join a piece that is only a number or label ("6.5.", "Figure 4.1.") to the sentence after it."""
    out: list[str] = []
    carry = ""
    for sentence in sentences:
        if _LABEL.fullmatch(sentence):
            carry = f"{carry} {sentence}".strip()
            continue
        out.append(f"{carry} {sentence}".strip() if carry else sentence)
        carry = ""
    if carry:
        out.append(carry)
    return out


def uses_pysbd(language: str | None, splitter: str) -> bool:
    """Whether ``splitter`` (``auto``, ``rules`` or ``pysbd``) splits text in ``language`` with pySBD."""
    if splitter == "rules" or language not in PYSBD_LANGUAGES:
        return False
    return splitter == "pysbd" or language != "en"


def split_sentences(text: str, language: str | None = None, splitter: str = "auto") -> list[str]:
    """Split ``text`` into sentences, whitespace normalised; blank lines always end a sentence.

    ``language`` (ISO 639-1, e.g. from ``language.identify_language``) picks pySBD's rules per ``splitter``
    (see ``uses_pysbd``); with no language, or one pySBD does not know, the English rules split.
    """
    pysbd = uses_pysbd(language, splitter)
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        normalised = " ".join(paragraph.split())
        if not normalised:
            continue
        if pysbd:
            pieces = [" ".join(s.split()) for s in _pysbd_segmenter(language).segment(normalised)]
            sentences.extend(s for s in pieces if s)
        else:
            sentences.extend(_split_paragraph(normalised))
    return _join_labels(sentences)
