"""The text stages on real documentation pages (tests/fixtures/real_pages): code, headings, per-site
boilerplate, gallery pages, and every drop accounted for."""

from __future__ import annotations

import json
from pathlib import Path

from corpus_fakes import ColourEmbedder, check_stage_accounting
from real_pages import FIXTURE, SiteServer, fixture_pages, write_pages_warc

from flamingo.corpus.config import BuildConfig, FetchConfig, FilterConfig, InterleaveConfig, ReadConfig
from flamingo.corpus.engine import run_pipeline
from flamingo.corpus.read import _decode_html, _extract
from flamingo.data.shards import ReadStats, read_interleaved

# Site furniture repeated on (nearly) every page of one of the two sites.
REPEATED = [
    "Docs for 0.19.3 All versions",
    "Note",
    "Click here to download the full example code",
    "The Debian Administrator's Handbook",
]
MAX_PROSE_CHARS = 1000  # the longest prose sentence of these pages has about 500 characters


def _pages(code: str) -> dict[str, object]:
    config = ReadConfig(code=code)
    return {
        page: _extract(_decode_html((FIXTURE / page).read_bytes(), None), f"http://x/{page}", config)
        for page in fixture_pages()
    }


def test_real_pages_keep_code_whole_and_prose_in_sentences() -> None:
    kept, dropped = _pages("keep"), _pages("drop")
    for page, read in kept.items():
        code = set(read.code_entries)
        prose = [s for i, s in enumerate(read.sentences) if i not in code]
        assert max(map(len, prose), default=0) <= MAX_PROSE_CHARS, page
        assert all("\n" not in s and not s.endswith(("¶", "#")) for s in prose), page
        assert not [s for s in prose if s.startswith("Out:") or "object at 0x" in s], page
        # dropping code removes exactly the code entries
        assert dropped[page].sentences == prose, page
    example = kept["scikit-image/auto_examples/segmentation/plot_thresholding.html"]
    code = [example.sentences[i] for i in example.code_entries]
    assert code[0].startswith("import matplotlib.pyplot as plt\nfrom skimage import data\n")
    assert any(c.startswith("Out:\n") for c in code)
    handbook = kept["debian-handbook/en-US/sect.graphical-desktops.html"]
    assert "13.3.1. GNOME" in handbook.sentences
    assert "Figure 13.1. The GNOME desktop" in handbook.sentences
    assert kept["scikit-image/auto_examples/index.html"].images == []  # gallery tiles are links


def test_real_pages_lose_site_furniture_and_every_drop_has_a_reason(tmp_path: Path) -> None:
    # keep_text writes every document that passes the text stages, so their text can be checked
    config = BuildConfig(
        fetch=FetchConfig(threads=4, timeout_s=5.0, retries=0, allow_loopback=True),
        filter=FilterConfig(max_faces=0, nsfw_threshold=1.0),
        interleave=InterleaveConfig(similarity_threshold=-1.0, no_image_policy="keep_text"),
        progress=False,
    )
    pages = fixture_pages()
    out = tmp_path / "out"
    with SiteServer(FIXTURE) as server:
        # one host per site: the line dedup works per site
        handbook = [p for p in pages if p.startswith("debian-handbook/")]
        skimage = [p for p in pages if p not in handbook]
        host = server.base.replace("127.0.0.1", "localhost")
        urls = write_pages_warc(tmp_path / "a.warc.gz", FIXTURE, handbook, host)
        urls |= write_pages_warc(tmp_path / "b.warc.gz", FIXTURE, skimage, server.base)
        run_pipeline([tmp_path / "a.warc.gz", tmp_path / "b.warc.gz"], out, config, embedder=ColourEmbedder())
    stages = json.loads((out / "stats.json").read_text())["stages"]
    assert stages["read"]["documents_in"] == len(pages)
    check_stage_accounting(stages)
    assert stages["lines"]["sentences_in"] - stages["lines"]["sentences_out"] >= 20
    written = [
        d.to_dict() for d in read_interleaved(sorted((out / "shards").glob("*.tar")), stats=ReadStats())
    ]
    assert written and all(doc["url"] in urls for doc in written)
    texts = [s for doc in written for s in doc["text_list"]]
    assert not [s for s in texts if s in REPEATED]
    # the gallery index is headings and linked thumbnails: no image, so the default policy drops it
    index = [doc for doc in written if doc["url"].endswith("auto_examples/index.html")]
    assert [doc["image_info"] for doc in index] == [[]]
    assert [doc for doc in written if doc["image_info"]]  # the articles' own figures do stay
