"""Fetching: safe by default, hostile servers and files refused with a reason, resumable manifests."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from corpus_fakes import encode, png_bomb, textured

from flamingo.corpus import netguard
from flamingo.corpus.config import FetchConfig
from flamingo.corpus.document import ImageRef, WebDocument
from flamingo.corpus.fetch import fetch_documents, fetch_one
from flamingo.corpus.imagecheck import ImageRejected, inspect_image, sniff_format

LOOPBACK = FetchConfig(threads=4, timeout_s=0.3, retries=1, backoff_s=0.01, allow_loopback=True)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.0.0.1", "private"),
        ("192.168.1.5", "private"),
        ("169.254.169.254", "private"),  # cloud metadata: link-local
        ("100.64.0.1", "private"),
        ("::ffff:10.0.0.1", "private"),  # IPv4-mapped IPv6
        ("fc00::1", "private"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
    ],
)
def test_address_refusal_is_safe_by_default(address: str, reason: str | None) -> None:
    assert netguard.address_refusal(address, FetchConfig()) == reason


def test_flags_allow_loopback_and_private_only() -> None:
    assert netguard.address_refusal("127.0.0.1", FetchConfig(allow_loopback=True)) is None
    assert netguard.address_refusal("10.0.0.1", FetchConfig(allow_loopback=True)) == "private"
    assert netguard.address_refusal("10.0.0.1", FetchConfig(allow_private=True)) is None
    assert (
        netguard.address_refusal("224.0.0.1", FetchConfig(allow_private=True, allow_loopback=True))
        == "multicast"
    )


def test_loopback_is_refused_without_the_flag_and_nothing_is_sent(image_server) -> None:
    url = image_server.add("/a.png", encode(textured("red", 0)))
    entry = fetch_one(url, FetchConfig(timeout_s=0.3), Path("/nonexistent"))
    assert (entry["status"], entry["reason"]) == ("failed", "refused_address")
    assert image_server.total_hits() == 0


def test_sniffing_ignores_extension_and_content_type() -> None:
    png = encode(textured("red", 1))
    jpeg = encode(textured("red", 1), "JPEG")
    assert (sniff_format(png), sniff_format(jpeg), sniff_format(b"<html>")) == ("png", "jpeg", None)
    with pytest.raises(ImageRejected) as info:
        inspect_image(jpeg[:200], 10**8)  # truncated JPEG
    assert info.value.reason == "decode_error"


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = png_bomb()
    assert len(bomb) < 200_000
    with pytest.raises(ImageRejected) as info:
        inspect_image(bomb, max_pixels=50_000_000)
    assert info.value.reason == "decompression_bomb"


def _docs(urls: list[str]) -> list[WebDocument]:
    return [WebDocument(id="d0", url="", sentences=["s."], images=[ImageRef(url=u) for u in urls])]


def test_hostile_and_broken_responses_are_recorded_per_image(image_server, tmp_path, monkeypatch) -> None:
    good = encode(textured("red", 2))
    jpeg = encode(textured("blue", 3), "JPEG", quality=90)
    s = image_server
    urls = {
        "ok": s.add("/ok.png", good),
        "wrong_type": s.add("/photo.png", jpeg, content_type="text/html"),  # a JPEG served as HTML
        "missing": s.base + "/missing.png",
        "slow": s.base + "/slow/ok.png",
        "error500": s.base + "/error500",
        "corrupt": s.add("/corrupt.jpg", jpeg[:300] + b"\x00" * 300, "image/jpeg"),
        "empty": s.add("/empty.jpg", b"", "image/jpeg"),
        "html": s.add("/page.jpg", b"<html>hello</html>", "image/jpeg"),
        "liar": s.base + "/liar/ok.png",
        "bomb": s.add("/bomb.png", png_bomb()),
        "private": s.base + "/redirect-to/http__10.0.0.1/x.png",
        "redirect_ok": s.base + "/redirect-to/" + s.base.replace("://", "__") + "/ok.png",
        "loop": s.base + "/loop",
        "scheme": s.base + "/redirect-to/file__/etc/passwd",
        "traversal": s.add("/a/..%2F..%2F..%2Fevil.png", encode(textured("green", 4))),
    }
    connected: list[str] = []
    real_connect = socket.create_connection

    def spy(address, *args, **kwargs):
        connected.append(address[0])
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", spy)
    docs = fetch_documents(_docs(list(urls.values())), LOOPBACK, tmp_path / "out", "shard-00000")
    got = {name: im.failure for name, im in zip(urls, docs[0].images)}
    assert got == {
        "ok": None,
        "wrong_type": None,
        "missing": "http_404",
        "slow": "timeout",
        "error500": "http_500",
        "corrupt": "decode_error",
        "empty": "empty",
        "html": "not_an_image",
        "liar": "body_exceeds_content_length",
        "bomb": "decompression_bomb",
        "private": "refused_address",
        "redirect_ok": None,
        "loop": "too_many_redirects",
        "scheme": "unsupported_url",
        "traversal": None,
    }
    assert "10.0.0.1" not in connected and set(connected) == {"127.0.0.1"}  # never any traffic to 10.0.0.1
    assert s.hits["/slow/ok.png"] == 2 and s.hits["/error500"] == 2  # retried once (5xx, timeout)
    assert s.hits["/missing.png"] == 1  # a 404 is not retried
    assert s.hits["/loop"] == LOOPBACK.max_redirects + 1
    ok = docs[0].images[0]
    assert (ok.format, ok.width, ok.height) == ("png", 160, 160)
    assert docs[0].images[1].format == "jpeg"  # sniffed from bytes, despite .png and text/html
    # Stored files are named by content hash inside out/images, whatever the URL said.
    stored = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert all(p.is_relative_to(tmp_path / "out") for p in stored)
    names = {p.name for p in stored if p.parent.parent.name == "images"}
    assert names == {f"{im.sha256}.{'jpg' if im.format == 'jpeg' else 'png'}" for im in docs[0].alive_images}
    assert not list(tmp_path.glob("**/evil*"))


def test_size_cap_is_enforced_while_streaming(image_server, tmp_path) -> None:
    url = image_server.add("/big.png", encode(textured("red", 5, size=256)))
    config = FetchConfig(timeout_s=0.3, retries=0, allow_loopback=True, max_bytes=1000)
    docs = fetch_documents(_docs([url]), config, tmp_path, "s")
    assert docs[0].images[0].failure == "too_large"


def test_local_files_only_inside_the_root(tmp_path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "in.png").write_bytes(encode(textured("red", 6)))
    (tmp_path / "outside.png").write_bytes(encode(textured("red", 7)))
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    refs = [
        "sub/in.png",
        (root / "sub" / "in.png").as_uri(),
        "../outside.png",
        "link.png",
        str(tmp_path / "outside.png"),
        "nope.png",
    ]
    allowed = FetchConfig(local_root=str(root))
    docs = fetch_documents(_docs(refs), allowed, tmp_path / "out", "s")
    assert [im.failure for im in docs[0].images] == [
        None,
        None,
        "outside_local_root",
        "outside_local_root",
        "outside_local_root",
        "not_found",
    ]
    refused = fetch_documents(_docs(["sub/in.png"]), FetchConfig(), tmp_path / "out2", "s")
    assert refused[0].images[0].failure == "local_files_disabled"


def test_local_files_are_fetched_in_this_thread_in_input_order(image_server, tmp_path, monkeypatch) -> None:
    """Threads only hide network latency: local pictures are read in the calling thread (under the GIL four
    threads were slower), so their manifest follows the input; network URLs still go to the thread pool."""
    import json
    import threading

    from flamingo.corpus import fetch

    root = tmp_path / "root"
    root.mkdir()
    refs = []
    for i in range(12):
        (root / f"{i}.png").write_bytes(encode(textured("red", 10 + i)))
        refs.append(f"{i}.png" if i % 2 else (root / f"{i}.png").as_uri())
    threads: list[int] = []
    real = fetch.fetch_one

    def spy(*args):
        threads.append(threading.get_ident())
        return real(*args)

    monkeypatch.setattr(fetch, "fetch_one", spy)
    config = FetchConfig(local_root=str(root), threads=4, allow_loopback=True)
    docs = fetch_documents(_docs(refs), config, tmp_path / "out", "s")
    assert all(im.failure is None for im in docs[0].images)
    assert set(threads) == {threading.get_ident()}
    manifest = (tmp_path / "out" / "manifests" / "s.jsonl").read_text().splitlines()
    assert [json.loads(line)["url"] for line in manifest] == refs
    threads.clear()
    urls = [image_server.add(f"/{i}.png", encode(textured("blue", 10 + i))) for i in range(4)]
    fetch_documents(_docs(urls), config, tmp_path / "out2", "s")
    assert len(threads) == 4 and threading.get_ident() not in threads


def test_manifest_resumes_without_refetching(image_server, tmp_path) -> None:
    urls = [image_server.add(f"/{i}.png", encode(textured("red", 10 + i))) for i in range(3)]
    urls.append(image_server.base + "/gone.png")
    out = tmp_path / "out"
    first = fetch_documents(_docs(urls[:2]), LOOPBACK, out, "shard-00000")  # "interrupted" after two images
    assert image_server.total_hits() == 2
    # A line cut short by the interruption is ignored (that image is fetched again).
    with open(out / "manifests" / "shard-00000.jsonl", "a") as f:
        f.write('{"url": "' + urls[2][:10])
    again = fetch_documents(_docs(urls), LOOPBACK, out, "shard-00000")
    assert image_server.hits["/0.png"] == 1 and image_server.hits["/1.png"] == 1
    assert image_server.hits["/2.png"] == 1 and image_server.hits["/gone.png"] == 1
    assert [im.sha256 for im in again[0].images[:2]] == [im.sha256 for im in first[0].images]
    third = fetch_documents(_docs(urls), LOOPBACK, out, "shard-00000")
    assert image_server.total_hits() == 4  # nothing fetched the third time, failures included
    assert third[0].images[3].failure == "http_404"


def test_a_drip_fed_body_hits_the_overall_deadline(image_server, tmp_path) -> None:
    config = FetchConfig(timeout_s=0.3, retries=0, allow_loopback=True)
    start = time.monotonic()
    entry = fetch_one(image_server.base + "/drip", config, tmp_path)
    assert entry["reason"] == "timeout"
    assert time.monotonic() - start < 2.0  # bounded by 3 x timeout_s, not by the 100 s the server would take
