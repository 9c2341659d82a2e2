"""The builder on real documentation pages (tests/fixtures/real_pages): a WARC of them goes through every
stage, their images come from a 127.0.0.1 server, and every page and image in is accounted for out."""

from __future__ import annotations

import json
import re
from pathlib import Path

from corpus_fakes import ColourEmbedder, check_stage_accounting
from real_pages import FIXTURE, SITES, SiteServer, fixture_pages, write_pages_warc

from flamingo.corpus.config import BuildConfig, FetchConfig, FilterConfig, InterleaveConfig
from flamingo.corpus.engine import run_pipeline
from flamingo.data.shards import ReadStats, read_interleaved


def _config() -> BuildConfig:
    # The real images' sizes go through the default size rules; faces and NSFW are off (a colour "CLIP").
    return BuildConfig(
        fetch=FetchConfig(threads=4, timeout_s=5.0, retries=0, allow_loopback=True),
        filter=FilterConfig(max_faces=0, nsfw_threshold=1.0),
        interleave=InterleaveConfig(similarity_threshold=-1.0),
        progress=False,
    )


def test_fixture_holds_both_sites_and_its_readme_lists_every_page() -> None:
    pages = fixture_pages()
    by_site = {site: [p for p in pages if p.startswith(site + "/")] for site in SITES}
    assert len(by_site["debian-handbook"]) >= 8 and len(by_site["scikit-image"]) >= 6
    readme = (FIXTURE / "README.md").read_text(encoding="utf-8")
    assert [p for p in pages if p not in readme] == []
    assert sum(f.stat().st_size for f in FIXTURE.rglob("*") if f.is_file()) < 1_500_000


def test_real_pages_go_through_the_builder_and_every_drop_has_a_reason(tmp_path: Path) -> None:
    pages = fixture_pages()
    out = tmp_path / "out"
    with SiteServer(FIXTURE) as server:
        urls = write_pages_warc(tmp_path / "real.warc.gz", FIXTURE, pages, server.base)
        result = run_pipeline([tmp_path / "real.warc.gz"], out, _config(), embedder=ColourEmbedder())
    stats = json.loads((out / "stats.json").read_text())
    assert stats == result.stats.to_dict()
    stages = stats["stages"]
    assert stages["read"]["documents_in"] == len(pages) == len(urls)
    check_stage_accounting(stages)
    # Images the fixture keeps are fetched; the larger ones it only references answer 404 (nothing else
    # goes wrong on a local server).
    fetch = stages["fetch"]
    assert fetch["images_out"] > 0 and set(fetch["images_dropped"]) == {"http_404"}
    written = list(read_interleaved(sorted((out / "shards").glob("*.tar")), stats=ReadStats()))
    assert len(written) == stages["write"]["documents_out"] > 0
    for doc in [d.to_dict() for d in written]:
        assert doc["url"] in urls
        # prose is whitespace-normalised; code entries keep their line breaks
        assert all(re.sub(r"\s+", " ", s).strip() == s for s in doc["text_list"] if "\n" not in s)
        for info in doc["image_info"]:  # every written image is a file of the fixture
            assert (FIXTURE / info["raw_url"].removeprefix(server.base + "/")).is_file(), info["raw_url"]
