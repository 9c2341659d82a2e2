"""Reading: sentence splitting, HTML extraction, WARC and JSONL inputs."""

from __future__ import annotations

import json
import time

import pytest
from corpus_fakes import page, write_warc

from flamingo.corpus.config import ReadConfig
from flamingo.corpus.read import (
    PageDropped,
    ReadCounts,
    _decode_html,
    extract_html,
    read_html_file,
    read_input,
    read_jsonl,
    read_warc,
)
from flamingo.corpus.sentences import split_sentences
from flamingo.corpus.stats import BuildStats


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Dr. Smith paid $3.5 million, e.g. for the lab. Then he left.",
            ["Dr. Smith paid $3.5 million, e.g. for the lab.", "Then he left."],
        ),
        ("Wait... what? He left... Nobody knew why!", ["Wait... what?", "He left...", "Nobody knew why!"]),
        ("Was it J. K. Rowling? \"Yes.\" She said so.", ["Was it J. K. Rowling?", '"Yes."', "She said so."]),
        ("Yahoo! is a company. Version 2.0 is out.", ["Yahoo! is a company.", "Version 2.0 is out."]),
        ("It grew approx. 10% in Jan. 2020. Pears etc. are fruit.", ["It grew approx. 10% in Jan. 2020.", "Pears etc. are fruit."]),
        ("See Fig. 3 and cf. the notes, i.e. page 4. Apples, etc. Then more.", ["See Fig. 3 and cf. the notes, i.e. page 4.", "Apples, etc.", "Then more."]),
        ("Visit example.com/a.html today. It costs 3.50 dollars.", ["Visit example.com/a.html today.", "It costs 3.50 dollars."]),
        ("It was late… Everyone slept. (Really.) Yes.", ["It was late…", "Everyone slept.", "(Really.)", "Yes."]),
        ("One line\nwraps here.\n\nA heading without a period\n\nText.", ["One line wraps here.", "A heading without a period", "Text."]),
        ("", []),
    ],
)  # fmt: skip
def test_split_sentences_on_tricky_text(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_extract_html_drops_boilerplate_and_keeps_image_order() -> None:
    html = """<html><head><base href="http://cdn.example.org/media/"><style>p{}</style></head><body>
    <header><img src="/logo.png">Site name</header>
    <nav><a href="/">Home</a> <a href="/b">Blog</a></nav>
    <div class="menu"><a href="/x">Login</a> | <a href="/y">Sign up</a> <img src="button.png"></div>
    <article><h1>Red cars</h1><p>The first sentence is here. Dr. Who drives a red car.</p>
      <img src="red.jpg" alt=" A  red car ">
      <p>Blue skies follow. <img src="../blue.png"> They are nice and <a href="/w">linked</a> a little.</p>
      <figure><a href="/big"><img data-src="//img.example.net/green.jpg"></a><figcaption>A green field.</figcaption></figure>
      <img src="data:image/png;base64,AAAA"><img src="javascript:alert(1)">
    </article>
    <aside>Related posts</aside><form>Subscribe now.</form><footer>Copyright 2024.</footer>
    <script>var a = 'Hidden. Text.';</script></body></html>"""
    sentences, images = extract_html(html, "http://example.com/post/1.html", ReadConfig())
    assert sentences == [
        "Red cars",
        "The first sentence is here.",
        "Dr. Who drives a red car.",
        "Blue skies follow.",
        "They are nice and linked a little.",
        "A green field.",
    ]
    assert [im.url for im in images] == [
        "http://cdn.example.org/media/red.jpg",
        "http://cdn.example.org/blue.png",
        "http://img.example.net/green.jpg",
    ]
    assert [im.position for im in images] == [3, 4, 5]  # the sentence each image precedes
    assert images[0].alt == "A red car"


def test_link_dense_short_blocks_are_dropped_but_long_prose_with_links_is_kept() -> None:
    prose = (
        "This is a long paragraph with " + "several words of real content " * 8 + '<a href="/x">one link</a>.'
    )
    html = f'<body><div><a href="/1">Tag one</a>, <a href="/2">tag two</a>, <a href="/3">tag three</a></div><p>{prose}</p></body>'
    sentences, _ = extract_html(html, "http://e.com/", ReadConfig())
    assert len(sentences) == 1 and sentences[0].startswith("This is a long paragraph")


def test_deeply_nested_page_does_not_crash() -> None:
    html = "<body>" + "<span>" * 5000 + "Deep text. Still here." + "</span>" * 5000 + "</body>"
    sentences, _ = extract_html(html, "http://e.com/", ReadConfig())
    assert sentences == ["Deep text.", "Still here."]


def test_read_warc_keeps_only_html_responses(tmp_path) -> None:
    pages = [
        ("http://a.example/1", page("First page.", ["A red car."], ["img/r.png"])),
        ("http://b.example/2", page("Second page.", ["A blue sky.", "More text."], [])),
    ]
    docs = list(read_warc(write_warc(tmp_path / "x.warc.gz", pages), ReadConfig()))
    assert [d.url for d in docs] == ["http://a.example/1", "http://b.example/2"]
    assert docs[0].sentences == ["First page.", "A red car."]
    assert [im.url for im in docs[0].images] == ["http://a.example/img/r.png"]
    assert docs[0].source == "x.warc.gz" and docs[0].id != docs[1].id
    assert all("Home" not in s and "Copyright" not in s for d in docs for s in d.sentences)


def test_read_jsonl_and_its_errors(tmp_path) -> None:
    good = tmp_path / "docs.jsonl"
    lines = [
        {
            "id": "a",
            "text": "A red car. A blue sky.",
            "images": ["http://x/1.png", {"url": "rel/2.png", "alt": "two"}],
        },
        {"id": "a", "text_list": ["Given sentence."], "url": "http://x/p", "lang": "en"},
    ]
    good.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    docs = read_input(good, ReadConfig())
    assert [d.id for d in docs] == ["a", "a~1"]  # repeated ids are made unique
    assert docs[0].sentences == ["A red car.", "A blue sky."]
    assert [(im.url, im.alt, im.position) for im in docs[0].images] == [
        ("http://x/1.png", "", None),
        ("rel/2.png", "two", None),
    ]
    # the record's own fields stay; the read stage adds the language it identified
    assert docs[1].metadata["lang"] == "en"
    assert set(docs[1].metadata) == {"lang", "language", "language_score"}

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok."}\n{"images": []}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: needs a string field 'text'"):
        list(read_jsonl(bad, ReadConfig()))
    with pytest.raises(ValueError, match="unknown kind"):
        read_input(tmp_path / "x.csv", ReadConfig())


def test_html_file_images_resolve_to_file_urls(tmp_path) -> None:
    (tmp_path / "pages").mkdir()
    html = tmp_path / "pages" / "p.html"
    html.write_text(page("Local page.", ["A red car."], ["img/r.png"]))
    (doc,) = read_input(html, ReadConfig())
    assert doc.images[0].url == (tmp_path / "pages" / "img" / "r.png").as_uri()
    assert doc.sentences == ["Local page.", "A red car."]


def test_a_page_nested_200000_deep_is_dropped_quickly_and_counted(tmp_path) -> None:
    deep = "<html><body>" + "<div>" * 200_000 + "Deep text." + "</div>" * 200_000 + "</body></html>"
    path = tmp_path / "deep.html"
    path.write_text(deep)
    counts = ReadCounts()
    start = time.perf_counter()
    assert read_html_file(path, ReadConfig(), counts=counts) == []
    assert time.perf_counter() - start < 5.0  # the parser alone needs minutes for this page
    assert counts.pages == 1 and counts.documents_dropped == {"too_deep": 1}
    with pytest.raises(PageDropped, match="max_nesting_depth=10000"):
        extract_html(deep, "http://e.com/", ReadConfig())
    # unclosed paragraphs and list items and void elements are not nesting: a long flat page is kept
    flat = "<body><ul>" + "<li><p>Item text. <br><img src='a.png'>" * 30_000 + "</ul></body>"
    sentences, _ = extract_html(flat, "http://e.com/", ReadConfig(max_nesting_depth=50))
    assert len(sentences) == 30_000


def test_every_page_is_a_kept_document_or_a_counted_drop(tmp_path) -> None:
    config = ReadConfig(max_html_bytes=20_000, max_nesting_depth=100, max_images_per_document=3)
    five_images = page("Gallery page.", ["Some text here."] * 5, [f"i{i}.png" for i in range(5)])
    pages = [
        ("http://e.com/ok", page("Kept page.", ["A red car."], ["r.png"])),
        ("http://e.com/big", page("Big page.", ["Word " * 5_000], [])),
        ("http://e.com/deep", "<body>" + "<span>" * 500 + "Deep." + "</span>" * 500 + "</body>"),
        ("http://e.com/empty", "<body><nav><a href='/'>Home</a></nav><img src='x.png'></body>"),
        ("http://e.com/many", five_images),
    ]
    counts = ReadCounts()
    docs = read_input(write_warc(tmp_path / "x.warc.gz", pages), config, counts)
    assert [d.url for d in docs] == ["http://e.com/ok", "http://e.com/many"]
    assert counts.documents_dropped == {"page_too_large": 1, "too_deep": 1, "too_few_sentences": 1}
    assert counts.pages == len(pages) == len(docs) + sum(counts.documents_dropped.values())
    assert len(docs[1].images) == 3
    assert counts.images_dropped == {"images_over_page_cap": 2, "document_too_few_sentences": 1}

    stats = BuildStats()
    stats.record_read(docs, counts)
    read = stats.to_dict()["stages"]["read"]
    assert (read["documents_in"], read["documents_out"], read["images_in"], read["images_out"]) == (
        5,
        2,
        7,
        4,
    )
    assert read["documents_dropped"] == {"page_too_large": 1, "too_deep": 1, "too_few_sentences": 1}
    assert "| read | documents | page_too_large | 1 |" in stats.report_markdown()


SMART = "\u201cSmart quotes\u201d at the caf\u00e9 \u2014 cr\u00e8me br\u00fbl\u00e9e, voil\u00e0."


def test_undeclared_windows_1252_is_detected(tmp_path) -> None:
    html = f"<html><head><title>t</title></head><body><p>{SMART} Plain words follow here.</p></body></html>"
    path = tmp_path / "p.html"
    path.write_bytes(html.encode("cp1252"))
    (doc,) = read_html_file(path, ReadConfig())
    assert doc.sentences == [SMART, "Plain words follow here."]
    path.write_bytes(html.encode("utf-8"))  # clean UTF-8 stays UTF-8
    assert read_html_file(path, ReadConfig())[0].sentences[0] == SMART


def test_a_meta_charset_after_4_kb_of_css_is_found() -> None:
    css = "p { color: #123456; margin: 0 auto; }\n" * 200  # about 8 KB before the <meta>
    html = (
        f"<html><head><style>{css}</style><meta http-equiv='Content-Type' content='text/html; "
        f"charset=windows-1252'></head><body><p>{SMART}</p></body></html>"
    )
    sentences, _ = extract_html(_decode_html(html.encode("cp1252"), "text/html"), "http://e/", ReadConfig())
    assert sentences == [SMART]
    # the header's charset wins over the page's own
    cyrillic = "\u041f\u0440\u0438\u0432\u0435\u0442"
    raw = b"<meta charset='cp1252'>" + cyrillic.encode("koi8_r")
    assert _decode_html(raw, "text/html; charset=KOI8-R").endswith(cyrillic)


def test_text_that_does_not_decode_is_dropped_and_counted(tmp_path) -> None:
    broken = "<body><p>" + "caf\u00e9 cr\u00e8me. " * 40 + "</p></body>"
    path = tmp_path / "broken.html"
    path.write_bytes(b"<meta charset='utf-8'>" + broken.encode("cp1252"))  # declared UTF-8, is not
    counts = ReadCounts()
    assert read_html_file(path, ReadConfig(), counts=counts) == []
    assert counts.documents_dropped == {"undecodable_text": 1}
    assert len(read_html_file(path, ReadConfig(max_replacement_share=0.5))) == 1


def test_lazy_loaded_images_resolve_to_the_real_image() -> None:
    blank = "data:image/gif;base64,R0lGODlhAQABAAAAACw="
    html = f"""<body><article><p>Lazy images follow in this article text.</p>
      <p><img src="{blank}" data-src="real.png" alt="one"></p>
      <p><img src="/img/blank.gif" data-original="/img/two.jpg"></p>
      <p><img data-lazy-src="three.jpg"></p>
      <p><img src="{blank}" data-srcset="s.jpg 320w, l.jpg 1280w, m.jpg 640w"></p>
      <p><img srcset="{blank} 1x, hi.jpg 2x"></p>
      <p><img src="kept.jpg" data-src="other.jpg"></p>
      <figure><img src="{blank}"><noscript><img src="four.jpg" alt="four"></noscript></figure>
      <figure><img src="{blank}" data-src="five.jpg"><noscript><img src="five.jpg"></noscript></figure>
      <figure><noscript><img src="six.jpg">Turn on JavaScript.</noscript><figcaption>Six.</figcaption></figure>
    </article></body>"""
    sentences, images = extract_html(html, "http://e.com/a/", ReadConfig())
    assert sentences == ["Lazy images follow in this article text.", "Six."]  # no noscript text
    assert [im.url.removeprefix("http://e.com") for im in images] == [
        "/a/real.png",
        "/img/two.jpg",
        "/a/three.jpg",
        "/a/l.jpg",  # the widest candidate
        "/a/hi.jpg",
        "/a/kept.jpg",  # a real src wins
        "/a/four.jpg",  # the noscript fallback of a placeholder
        "/a/five.jpg",  # once, not again from its noscript
        "/a/six.jpg",
    ]
    assert images[0].alt == "one" and images[6].alt == "four"


def test_link_wrapped_images_without_prose_around_them_are_dropped() -> None:
    albums = "".join(
        f'<h2>Album number {i}</h2><div class="thumb"><a href="/album/{i}"><img src="t{i}.jpg"></a></div>'
        for i in range(4)
    )
    gallery = f'<body><div class="logo"><a href="/"><img src="logo.png"></a></div>{albums}</body>'
    sentences, images = extract_html(gallery, "http://e.com/", ReadConfig())
    assert images == [] and sentences == [f"Album number {i}" for i in range(4)]

    article = """<body><div><a href="/"><img src="logo.png"></a></div><article><h1>A walk</h1>
      <p>We walked along the river in the morning.</p>
      <div><a href="/big.jpg"><img src="river.jpg"></a></div>
      <p>Then we had lunch by the bridge.</p>
      <figure><a href="/f.jpg"><img src="field.jpg"></a><figcaption>The field.</figcaption></figure>
      <p>Back home, a <a href="/map"><img src="map.png"></a> map of the walk.</p></article></body>"""
    _, images = extract_html(article, "http://e.com/", ReadConfig())
    assert [im.url.rsplit("/", 1)[1] for im in images] == ["river.jpg", "field.jpg", "map.png"]
