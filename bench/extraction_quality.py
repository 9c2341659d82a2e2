"""Text-extraction quality on real pages: how much of the hand-checked prose an extractor keeps, and how much
site furniture, repeated text and code it lets through. Used by ``bench_build.py --quality``.

An extractor's output for one page is a list of *units*: the builder's sentences, or trafilatura's lines split
into sentences with the builder's own splitter, so both are cut the same way. The measures:

* prose kept: a gold sentence counts as kept when, after normalisation (Unicode NFKC, case folded, typographic
  quotes and dashes made ASCII, whitespace collapsed), at least 90% of its characters are found, in order,
  in one stretch of the page's output (its units joined by spaces) that is no longer than the sentence plus
  20 characters on each side. This forgives a changed quote or a split word, not a lost clause.
* boilerplate characters: a unit made only of the site's boilerplate pieces (the patterns in ``gold.json``,
  each matching one whole piece, e.g. a menu item) and punctuation (at least one piece) counts in full; in other units only
  pieces of 20 characters or more count, so a menu word like "Next" inside a sentence is not boilerplate.
* repeated characters: units found verbatim on ``REPEAT_PAGES`` or more pages of the same site (navigation,
  footers, banners that no list names).
* code share: characters of the output that are lines of the page's ``<pre>`` blocks (lines of 12 characters
  or more, whitespace collapsed), over all output characters.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from selectolax.lexbor import LexborHTMLParser

MATCH_SHARE = 0.9  # share of a gold sentence's characters that must be found
MATCH_SLACK = 20  # characters allowed on each side of the sentence's stretch of output
LONG_PIECE = 20  # boilerplate pieces at least this long count inside other text too
REPEAT_PAGES = 3  # a unit on this many pages of one site is repeated text
CODE_LINE_CHARS = 12  # shorter lines of <pre> blocks are not looked for (too likely to occur in prose)

_ASCII = str.maketrans({"‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"', "–": "-", "—": "-"})


def normalise(text: str) -> str:
    """``text`` for matching: NFKC, case folded, ASCII quotes and dashes, single spaces."""
    return " ".join(unicodedata.normalize("NFKC", text).translate(_ASCII).casefold().split())


def is_kept(sentence: str, output: str) -> bool:
    """Whether the gold ``sentence`` is in ``output`` (both already ``normalise``d) under the rule above."""
    if not sentence or sentence in output:
        return bool(sentence)
    matcher = difflib.SequenceMatcher(None, sentence, output, autojunk=False)
    match = matcher.find_longest_match(0, len(sentence), 0, len(output))
    if match.size == 0:
        return False
    start = max(0, match.b - match.a - MATCH_SLACK)
    window = output[start : match.b - match.a + len(sentence) + MATCH_SLACK]
    window_matcher = difflib.SequenceMatcher(None, sentence, window, autojunk=False)
    found = sum(block.size for block in window_matcher.get_matching_blocks())
    return found >= MATCH_SHARE * len(sentence)


def compile_boilerplate(patterns: Iterable[str]) -> list[re.Pattern[str]]:
    """The gold file's boilerplate patterns, anchored at word edges where they start or end with a word
    character (so "Up" does not match inside "Update"), longest first."""
    compiled = []
    for pattern in sorted(patterns, key=len, reverse=True):
        head = r"(?<!\w)" if re.match(r"\w", pattern) else ""
        tail = r"(?!\w)" if re.search(r"\w$", pattern) else ""
        compiled.append(re.compile(f"{head}(?:{pattern}){tail}"))
    return compiled


def boilerplate_chars(unit: str, patterns: Sequence[re.Pattern[str]]) -> int:
    """Characters of ``unit`` that are site furniture, by the rule in the module docstring."""
    long_chars = pieces = 0

    def cut(match: re.Match[str]) -> str:
        nonlocal long_chars, pieces
        pieces += 1
        if len(match.group()) >= LONG_PIECE:
            long_chars += len(match.group())
        return " "

    rest = unit
    for pattern in patterns:
        rest = pattern.sub(cut, rest)
    return len(unit) if pieces and not re.search(r"[^\W_]", rest) else long_chars


def code_lines(html: str) -> set[str]:
    """The lines (whitespace collapsed, at least ``CODE_LINE_CHARS`` long) of the page's ``<pre>`` blocks."""
    tree = LexborHTMLParser(html)
    lines = set()
    for pre in tree.css("pre"):
        for line in pre.text(deep=True).splitlines():
            line = " ".join(line.split())
            if len(line) >= CODE_LINE_CHARS:
                lines.add(line)
    return lines


def code_chars(output: str, lines: Iterable[str]) -> int:
    """Characters of ``output`` (units joined by spaces) taken up by the code ``lines``, at most all of it."""
    return min(len(output), sum(output.count(line) * len(line) for line in lines))


def measure(
    units_by_page: dict[str, list[str]],
    html_by_page: dict[str, str],
    gold: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    """One extractor's figures over pages named ``site/...`` (``units_by_page``: page -> its output units).

    Returns prose recall over the gold pages, boilerplate and repeated characters, the longest unit, the code
    share, output size and pages per second (``seconds``: the extractor's time over all pages).
    """
    patterns = {site: compile_boilerplate(p) for site, p in gold["boilerplate"].items()}
    pages_per_unit: dict[tuple[str, str], set[str]] = {}
    for page, units in units_by_page.items():
        site = page.split("/", 1)[0]
        for unit in units:
            pages_per_unit.setdefault((site, unit), set()).add(page)
    chars = boiler = repeated = code = 0
    longest = ""
    for page, units in units_by_page.items():
        site = page.split("/", 1)[0]
        output = " ".join(units)
        chars += sum(len(u) for u in units)
        boiler += sum(boilerplate_chars(u, patterns.get(site, [])) for u in units)
        repeated += sum(len(u) for u in units if len(pages_per_unit[(site, u)]) >= REPEAT_PAGES)
        code += code_chars(" ".join(output.split()), code_lines(html_by_page[page]))
        longest = max([longest, *units], key=len)
    kept: Counter[str] = Counter()
    total: Counter[str] = Counter()
    missed = []
    for page, sentences in gold["prose"].items():
        if page not in units_by_page:
            continue
        output = normalise(" ".join(units_by_page[page]))
        for sentence in sentences:
            ok = is_kept(normalise(sentence), output)
            site = page.split("/", 1)[0]
            total[site] += 1
            kept[site] += ok
            if not ok:
                missed.append(f"{page}: {sentence}")
    return {
        "pages": len(units_by_page),
        "pages_with_text": sum(1 for units in units_by_page.values() if units),
        "gold_sentences": sum(total.values()),
        "prose_kept": sum(kept.values()) / max(1, sum(total.values())),
        "prose_kept_by_site": {site: kept[site] / total[site] for site in sorted(total)},
        "output_chars": chars,
        "boilerplate_chars": boiler,
        "repeated_chars": repeated,
        "code_share": code / max(1, chars),
        "longest_sentence_chars": len(longest),
        "longest_sentence": longest[:200],
        "seconds": seconds,
        "pages_per_s": len(units_by_page) / seconds if seconds > 0 else 0.0,
        "missed": missed,
    }
