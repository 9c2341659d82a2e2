"""Text a model should read: code blocks, headings, sentence splitting, language, quality rules, line dedup."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from corpus_fakes import (
    ColourEmbedder,
    ImageServer,
    check_stage_accounting,
    encode,
    small_config,
    textured,
    write_warc,
)

from flamingo.configs import ConfigError
from flamingo.corpus import run_pipeline
from flamingo.corpus.config import BuildConfig, ReadConfig, TextConfig
from flamingo.corpus.document import ImageRef, WebDocument
from flamingo.corpus.language import filter_language, identify_language
from flamingo.corpus.lines import apply_line_dedup, line_records, plan_line_dedup, site_of
from flamingo.corpus.quality import filter_quality
from flamingo.corpus.read import ReadCounts, _extract, extract_html, read_jsonl
from flamingo.corpus.sentences import split_sentences

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "It was a warm day and the sun was shining on the water.",
    "Children played with a ball in the park while their parents talked about the news of the week.",
    "A baker on the corner sold fresh bread to everyone who passed by his little shop.",
    "Later that evening the clouds came in from the sea and it started to rain.",
    "Everybody went home early, and the streets of the town were quiet until the next morning.",
]
PROSE = " ".join(SENTENCES)

SPHINX_EXAMPLE = """<html><body><div class="body">
<h1>Thresholding<a class="headerlink" href="#thresholding" title="Permalink to this headline">¶</a></h1>
<p>Thresholding turns a grey image into a binary one. It is simple and fast.</p>
<div class="highlight-python notranslate"><div class="highlight"><pre><span></span><span class="kn">import</span> <a href="api.html#np">numpy</a> <span class="k">as</span> <span class="nn">np</span>
<span class="n">image</span> <span class="o">=</span> <a href="api.html#data">data</a><span class="o">.</span><a href="api.html#camera">camera</a><span class="p">()</span>

<span class="n">plt</span><span class="o">.</span><span class="n">imshow</span><span class="p">(</span><span class="n">image</span><span class="p">)</span>
</pre></div></div>
<p class="sphx-glr-script-out">Out:</p>
<div class="sphx-glr-script-out highlight-none notranslate"><div class="highlight"><pre><span></span>&lt;matplotlib.image.AxesImage object at 0x7f26b63e61d0&gt;
</pre></div></div>
<h2>6.5. Reading the histogram<a class="headerlink" href="#h" title="Permalink to this heading">#</a></h2>
<p>The histogram shows two peaks. The threshold lies between them.</p>
<div class="figure"><img src="/fig.png" alt="histogram"><p class="title"><strong>Figure 4.1. </strong>The histogram of the camera image</p></div>
<pre>short = 1</pre>
<p>One <code>inline</code> word stays in its sentence.</p>
</div></body></html>"""


def test_code_blocks_are_kept_whole_with_their_line_breaks_and_output() -> None:
    page = _extract(SPHINX_EXAMPLE, "http://docs.example/t.html", ReadConfig())
    code = [page.sentences[i] for i in page.code_entries]
    assert code[0] == (
        "import numpy as np\nimage = data.camera()\n\nplt.imshow(image)"
    )  # linked identifiers are code, not a menu
    assert (
        code[1] == "Out:\n<matplotlib.image.AxesImage object at 0x7f26b63e61d0>"
    )  # output goes with the code
    assert code[2] == "short = 1"  # a short code block stays although it has no line break
    assert "Out:" not in page.sentences  # the label is not a sentence of its own
    prose = [s for i, s in enumerate(page.sentences) if i not in page.code_entries]
    assert all("\n" not in s for s in prose)
    assert "One inline word stays in its sentence." in prose
    linked = '<p>Call it.</p><pre><a href="a">skimage.filters.threshold_otsu</a>(<a href="b">image</a>)</pre>'
    assert extract_html(f"<html><body>{linked}</body></html>", "http://d.example/", ReadConfig())[0] == [
        "Call it.",
        "skimage.filters.threshold_otsu(image)",
    ]  # all link, yet code: not a menu


def test_code_blocks_can_be_dropped_and_images_stay_in_place() -> None:
    sentences, images = extract_html(SPHINX_EXAMPLE, "http://docs.example/t.html", ReadConfig(code="drop"))
    assert not any("import" in s or "matplotlib" in s or "short = 1" in s for s in sentences)
    assert "Out:" not in sentences
    assert sentences[images[0].position] == "Figure 4.1. The histogram of the camera image"


def test_headings_lose_permalink_marks_and_numbered_headings_and_captions_stay_whole() -> None:
    sentences, _ = extract_html(SPHINX_EXAMPLE, "http://docs.example/t.html", ReadConfig())
    assert sentences[0] == "Thresholding"
    assert "6.5. Reading the histogram" in sentences
    assert "Figure 4.1. The histogram of the camera image" in sentences
    assert not any(s.endswith(("¶", "#")) or s in ("6.5.", "Figure 4.1.") for s in sentences)


@pytest.mark.parametrize("splitter", ["rules", "pysbd"])
def test_labels_join_the_sentence_after_them_with_either_splitter(splitter: str) -> None:
    text = "6.5. Title of the section. Figure 4.1. A caption here. See Table 2: the totals. It ends."
    assert split_sentences(text, "en", splitter) == [
        "6.5. Title of the section.",
        "Figure 4.1. A caption here.",
        "See Table 2: the totals.",
        "It ends.",
    ]


def test_japanese_is_split_at_its_full_stops_by_pysbd() -> None:
    text = "これは日本語の文章です。今日は晴れです。明日は雨が降るでしょうか？"
    assert split_sentences(text) == [text]  # the English rules need a space after the stop
    assert split_sentences(text, "ja") == [
        "これは日本語の文章です。",
        "今日は晴れです。",
        "明日は雨が降るでしょうか？",
    ]
    page = _extract(f"<html><body><p>{text}</p></body></html>", "http://jp.example/", ReadConfig())
    assert page.language == "ja" and len(page.sentences) == 3


def test_language_is_identified_recorded_and_filtered(tmp_path) -> None:
    assert identify_language(PROSE)[0] == "en"
    assert identify_language("Le chat dort sur le canapé pendant que la pluie tombe dehors.")[0] == "fr"
    assert identify_language("12345 678 --") == ("", 0.0)
    lines = [
        {"id": "en", "text": PROSE},
        {"id": "fr", "text": "Le chat dort sur le canapé pendant que la pluie tombe dehors. Il fait froid."},
        {"id": "short", "text_list": ["Ok"]},
    ]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    docs = list(read_jsonl(path, ReadConfig(), ReadCounts()))
    assert docs[0].metadata["language"] == "en" and docs[0].metadata["language_score"] > 0.99
    kept, dropped = filter_language(docs, TextConfig(languages=["en"], min_language_score=0.5))
    assert [d.id for d in kept] == ["en"]
    assert {d.id: r for d, r in dropped} == {
        "fr": "wrong_language",
        "short": ("low_language_score" if docs[2].metadata["language"] == "en" else "wrong_language"),
    }
    kept, dropped = filter_language(docs, TextConfig(languages=[]))
    assert len(kept) == 3 and dropped == []


def _doc(doc_id: str, sentences: list[str], url: str = "http://a.example/p", **metadata) -> WebDocument:
    return WebDocument(id=doc_id, url=url, sentences=sentences, metadata={"language": "en", **metadata})


def test_quality_rules_drop_under_their_own_reasons_and_ignore_code() -> None:
    good = _doc("good", SENTENCES)
    short = _doc("short", ["Only a few words here."])
    braces = _doc("braces", [*SENTENCES, "Use the {placeholder} syntax in the template, they said."])
    lorem = _doc("lorem", [*SENTENCES, "Lorem ipsum dolor sit amet, consectetur adipiscing elit."])
    repeated = _doc("repeated", ["The cat and the dog went to the park with the children."] * 30)
    with_code = _doc(
        "code",
        [*SENTENCES, "int main() {\n  return 0;\n}"],
        code_entries=[len(SENTENCES)],
    )
    french = _doc("fr", ["Bonjour."], language="fr")  # the English rules do not judge other languages
    kept, dropped = filter_quality([good, short, braces, lorem, repeated, with_code, french], TextConfig())
    assert [d.id for d in kept] == ["good", "code", "fr"]
    assert {d.id: r for d, r in dropped} == {
        "short": "gopher_short_doc",
        "braces": "curly_bracket",
        "lorem": "lorem_ipsum",
        "repeated": "dup_line_frac",
    }
    only_gopher_quality = TextConfig(gopher_repetition=False, c4=False)
    assert filter_quality([repeated], only_gopher_quality) == ([repeated], [])
    assert filter_quality(
        [short, braces], TextConfig(gopher_quality=False, gopher_repetition=False, c4=False)
    ) == (
        [short, braces],
        [],
    )


def test_quality_rules_download_nothing(monkeypatch) -> None:
    """datatrove's word tokenizers are spaCy's blank pipelines: building them must not touch the network."""
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    import flamingo.corpus.quality as quality

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the quality rules tried to open a network connection")

    load_word_tokenizer.cache_clear()
    quality._filters.cache_clear()
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    kept, _ = filter_quality([_doc("good", SENTENCES)], TextConfig())
    assert len(kept) == 1


def test_quality_thresholds_are_checked_by_the_config_loader() -> None:
    with pytest.raises(ConfigError, match="gopher_dup_line_frac"):
        BuildConfig.from_dict({"text": {"gopher_dup_line_frac": 2}})
    with pytest.raises(ConfigError, match="languages"):
        BuildConfig.from_dict({"text": {"languages": ["en", "en-US"]}})
    with pytest.raises(ConfigError, match=r"read\.code"):
        BuildConfig.from_dict({"read": {"code": "inline"}})
    assert BuildConfig.from_dict({"text": {"languages": [], "c4": False}}).text.languages == []


def test_lines_repeated_on_many_pages_of_a_site_are_removed_and_images_move_with_the_text() -> None:
    banner, note = "Docs for 0.19.3 All versions", "Note"
    docs = [
        _doc(f"p{i}", [banner, f"Page {i} says something of its own.", note], url=f"https://site.example/{i}")
        for i in range(3)
    ]
    docs[0].images = [ImageRef("https://site.example/a.png", position=1), ImageRef("x", position=3)]
    docs.append(_doc("menu", [banner, note], url="https://site.example/menu"))
    other = _doc("other", [banner, "Another site."], url="https://other.example/")
    records = line_records([*docs, other])
    repeated = plan_line_dedup(records, min_pages=3)
    assert plan_line_dedup(list(reversed(records)), min_pages=3) == repeated  # order does not matter
    assert set(repeated) == {"site.example"}  # the other site shows the banner once
    kept, dropped = apply_line_dedup([*docs, other], repeated)
    assert [d.sentences for d in kept[:3]] == [[f"Page {i} says something of its own."] for i in range(3)]
    assert [im.position for im in kept[0].images] == [0, 1]
    assert kept[3].sentences == [banner, "Another site."]
    assert [(d.id, r) for d, r in dropped] == [("menu", "all_lines_repeated")]
    assert plan_line_dedup(records, min_pages=0) == {}
    assert site_of(_doc("f", [], url="file:///data/site/a.html")) == "file:/data/site"
    no_url = [_doc(f"j{i}", ["A line every JSONL document has."], url="") for i in range(3)]
    assert site_of(no_url[0]) == "" and plan_line_dedup(line_records(no_url), min_pages=3) == {}


def _site_pages(server: ImageServer) -> list[tuple[str, str]]:
    """Four pages of one site with a repeated banner and footer note, and one French page."""
    pages = []
    for i in range(4):
        image = server.add(f"/t{i}.png", encode(textured("red", 30 + i)))
        body = f"<p>Docs for 0.19.3 All versions</p><h1>Part {i}</h1><img src='{image}' alt='a red car'>"
        body += f"<p>A red car number {i} drives by the old mill.</p><p>Click here to download the code</p>"
        pages.append((f"http://docs.example/p{i}", f"<html><body>{body}</body></html>"))
    pages.append(
        ("http://docs.example/menu", "<html><body><p>Docs for 0.19.3 All versions</p></body></html>")
    )
    french = "<p>Une voiture rouge passe devant le vieux moulin, et le chat dort sur le canapé.</p>"
    pages.append(("http://fr.example/", f"<html><body>{french}</body></html>"))
    return pages


def _build(inputs: list[Path], out: Path, engine: str) -> dict:
    config = small_config()
    config.text = TextConfig(languages=["en"], min_language_score=0.0, gopher_quality=False,
                             gopher_repetition=False, c4=False, line_dedup_min_pages=3)  # fmt: skip
    run_pipeline(inputs, out, config, engine=engine, workers=2 if engine == "local" else 1,
                 embedder=ColourEmbedder())  # fmt: skip
    stats = json.loads((out / "stats.json").read_text())
    for stage in stats["stages"].values():
        stage.pop("seconds")  # wall times differ from run to run
    return stats


def test_text_stages_count_every_drop_in_stats_with_either_engine(image_server, tmp_path) -> None:
    pages = _site_pages(image_server)
    # the site's pages are split over two inputs: the line counts are corpus-wide
    inputs = [write_warc(tmp_path / "a.warc.gz", pages[:3]), write_warc(tmp_path / "b.warc.gz", pages[3:])]
    stats = _build(inputs, tmp_path / "local", "local")
    stages = stats["stages"]
    assert list(stages)[:4] == ["read", "language", "lines", "quality"]
    assert stages["read"]["documents_in"] == 6
    assert stages["language"]["documents_dropped"] == {"wrong_language": 1}
    assert stages["lines"]["documents_dropped"] == {"all_lines_repeated": 1}
    # the banner and the download line on every page go; headings and prose stay
    assert stages["lines"]["sentences_in"] - stages["lines"]["sentences_out"] == 4 * 2 + 1
    check_stage_accounting(stages)
    assert stages["write"]["documents_out"] == 4

    ray = pytest.importorskip("ray")
    here = Path(__file__).resolve().parent
    paths = os.pathsep.join([str(here.parents[1] / "src"), str(here)])  # workers unpickle the fake CLIP
    ray.init(num_cpus=1, include_dashboard=False, object_store_memory=200 * 2**20,
             runtime_env={"env_vars": {"PYTHONPATH": paths}})  # fmt: skip
    try:
        assert _build(inputs, tmp_path / "ray", "ray") == stats
    finally:
        ray.shutdown()
    tars = [sorted((tmp_path / e / "shards").glob("*.tar")) for e in ("local", "ray")]
    assert [p.read_bytes() for p in tars[0]] == [p.read_bytes() for p in tars[1]]
