"""The extraction-quality bench's scoring rules (bench/extraction_quality.py), and the hand-checked sample they
score against (tests/fixtures/real_pages/gold.json): its sentences are on their pages, outside code, and its
boilerplate patterns are on the pages of their site."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from selectolax.lexbor import LexborHTMLParser

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "real_pages"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


quality = _load("extraction_quality")
GOLD = json.loads((FIXTURE / "gold.json").read_text(encoding="utf-8"))


def _visible_text(html: str, drop: str = "script, style", separator: str = "") -> str:
    """The page's text with the ``drop`` elements removed, text nodes joined by ``separator``."""
    tree = LexborHTMLParser(html)
    for node in tree.css(drop):
        node.decompose()
    return tree.body.text(separator=separator)


def test_a_sentence_is_kept_despite_typography_but_not_without_a_clause() -> None:
    norm = quality.normalise
    out = norm("Intro. The term ‘release’ —  in Debian — indicates a version of a distribution. Next part.")
    assert quality.is_kept(
        norm("The term 'release' - in Debian - indicates a version of a distribution."), out
    )
    assert quality.is_kept(
        norm("the TERM 'release' - in debian - indicates a version of a distributon."), out
    )
    assert not quality.is_kept(
        norm("The term 'release' indicates the public announcement of a version."), out
    )
    assert not quality.is_kept(norm("Nothing like this is in the output at all."), out)
    assert not quality.is_kept("", out)


def test_boilerplate_counts_whole_menu_units_and_long_pieces_only() -> None:
    patterns = quality.compile_boilerplate(
        ["Prev", "Next", "Up", r"Download Python source code: [\w.-]+\.py"]
    )
    assert quality.boilerplate_chars("Prev Up Next", patterns) == len("Prev Up Next")
    assert quality.boilerplate_chars("Next, run apt update.", patterns) == 0  # a menu word inside prose
    assert quality.boilerplate_chars("Update the system.", patterns) == 0  # "Up" only as a whole word
    piece = "Download Python source code: plot_x.py"
    assert quality.boilerplate_chars(f"See the figure. {piece}", patterns) == len(piece)
    assert quality.boilerplate_chars("[...]", patterns) == 0  # punctuation alone is no furniture


def test_code_lines_come_from_pre_blocks_and_count_once_per_occurrence() -> None:
    html = "<p>Run it like this now.</p><pre>$ apt-cache policy limnoria\n  ok\nprint(image.mean())</pre>"
    lines = quality.code_lines(html)
    assert lines == {"$ apt-cache policy limnoria", "print(image.mean())"}  # "ok" is too short to look for
    output = "Run it. $ apt-cache policy limnoria Then $ apt-cache policy limnoria again."
    assert quality.code_chars(output, lines) == 2 * len("$ apt-cache policy limnoria")


def test_measure_scores_recall_repetition_and_speed_per_site() -> None:
    gold = {
        "prose": {"a/1.html": ["The first fact is true.", "The second fact is lost."], "b/1.html": ["Kept."]},
        "boilerplate": {"a": ["Home"], "b": []},
    }
    units = {
        "a/1.html": ["Home", "The first fact is true.", "Shared footer line."],
        "a/2.html": ["Home", "Other text.", "Shared footer line."],
        "a/3.html": ["Shared footer line."],
        "b/1.html": ["Kept.", "Shared footer line."],
    }
    html = {page: "<p>x</p><pre>print('a long code line')</pre>" for page in units}
    row = quality.measure(units, html, gold, seconds=2.0)
    assert row["prose_kept"] == 2 / 3 and row["prose_kept_by_site"] == {"a": 0.5, "b": 1.0}
    assert row["missed"] == ["a/1.html: The second fact is lost."]
    assert row["boilerplate_chars"] == 2 * len("Home")
    assert row["repeated_chars"] == 3 * len("Shared footer line.")  # on 3 pages of site a, 1 of site b
    assert row["code_share"] == 0.0 and row["pages_per_s"] == 2.0
    assert row["longest_sentence_chars"] == len("The first fact is true.")


def test_gold_sentences_are_prose_of_their_pages_and_boilerplate_is_on_its_site() -> None:
    assert len(GOLD["prose"]) >= 10
    for page, sentences in GOLD["prose"].items():
        html = (FIXTURE / page).read_text(encoding="utf-8")
        prose = quality.normalise(_visible_text(html, "script, style, pre"))
        code = quality.normalise(" ".join(pre.text() for pre in LexborHTMLParser(html).css("pre")))
        assert len(sentences) >= 5, page
        for sentence in sentences:
            assert quality.normalise(sentence) in prose, f"{page}: {sentence}"
            assert quality.normalise(sentence) not in code, f"{page}: {sentence}"
    for site, patterns in GOLD["boilerplate"].items():
        # menu items are separate text nodes; a footer sentence runs across links: try both joins
        texts = [
            " ".join(_visible_text(p.read_text(encoding="utf-8"), separator=separator).split())
            for p in sorted((FIXTURE / site).rglob("*.html"))
            for separator in ("", " ")
        ]
        for pattern in quality.compile_boilerplate(patterns):
            assert any(pattern.search(text) for text in texts), f"{site}: {pattern.pattern}"
