"""The one fetcher: an overall deadline a slow sender cannot stretch, checked redirects, a byte cap, a bounded
pool whose queue time counts against the deadline. All traffic goes to 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from io_support import SlowServer

from flamingo.io.addresses import AddressPolicy
from flamingo.io.fetch import FetchError, FetchPolicy, FetchPool, fetch

LOOPBACK = AddressPolicy(allow_loopback=True)


@pytest.fixture(scope="module")
def slow():
    with SlowServer(interval_s=1.0) as server:
        yield server


@pytest.mark.parametrize("path", ["/drip", "/drip-headers"])
def test_a_one_byte_a_second_sender_cannot_stretch_the_deadline(slow, path):
    """Each byte arrives well within any per-read timeout; only the overall deadline can stop the fetch, and it
    does so within a second of its setting, whether the drip is in the body or in the headers."""
    policy = FetchPolicy(deadline_s=1.5, idle_timeout_s=5.0, addresses=LOOPBACK)
    start = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch(slow.base + path, policy)
    took = time.monotonic() - start
    assert info.value.reason == "timeout" and info.value.retryable
    assert 1.5 <= took < 2.5, took


def test_a_redirect_to_a_private_address_is_refused_without_connecting(slow, monkeypatch):
    connected = []
    real = socket.create_connection
    monkeypatch.setattr(
        socket, "create_connection", lambda addr, *a, **k: connected.append(addr[0]) or real(addr, *a, **k)
    )
    with pytest.raises(FetchError) as info:
        fetch(slow.base + "/to-private", FetchPolicy(deadline_s=5, addresses=LOOPBACK))
    assert (info.value.reason, info.value.address) == ("refused_address", "10.0.0.1")
    assert info.value.url == "http://10.0.0.1/secret.png"
    assert connected == ["127.0.0.1"]  # the first hop only


def test_loopback_is_refused_unless_the_policy_allows_it(slow):
    hits = len(slow.hits)
    with pytest.raises(FetchError) as info:
        fetch(slow.base + "/ok", FetchPolicy(deadline_s=5))
    assert (info.value.reason, info.value.address) == ("refused_address", "127.0.0.1")
    assert len(slow.hits) == hits  # nothing was sent
    fetched = fetch(slow.base + "/hop/2", FetchPolicy(deadline_s=5, addresses=LOOPBACK))
    assert (fetched.body, fetched.final_url) == (b"hello", slow.base + "/ok")
    with pytest.raises(FetchError, match="too_many_redirects"):
        fetch(slow.base + "/hop/4", FetchPolicy(deadline_s=5, max_redirects=3, addresses=LOOPBACK))


def test_bytes_are_capped_from_the_header_and_while_streaming(slow):
    with pytest.raises(FetchError) as info:
        fetch(slow.base + "/ok", FetchPolicy(deadline_s=5, max_bytes=4, addresses=LOOPBACK))
    assert (info.value.reason, info.value.declared) == ("too_large", 5)
    with pytest.raises(FetchError, match="unsupported_url"):
        fetch("file:///etc/passwd", FetchPolicy(addresses=LOOPBACK))


def test_the_pool_bounds_threads_and_counts_waiting_against_the_deadline(slow):
    """Two threads, six slow fetches of a 1 s deadline: the last four wait, and fail at their deadline (set when
    submitted), so every caller has its answer within about a second instead of three."""
    pool = FetchPool(workers=2, max_pending=6)
    policy = FetchPolicy(deadline_s=1.0, addresses=LOOPBACK)
    try:
        start = time.monotonic()
        futures = [pool.submit(slow.base + "/drip", policy) for _ in range(6)]
        with pytest.raises(FetchError) as busy:
            pool.submit(slow.base + "/ok", policy)
        assert busy.value.reason == "busy"
        for future in futures:
            with pytest.raises(FetchError, match="timeout"):
                future.result(timeout=5)
        assert time.monotonic() - start < 2.0
        assert sum(t.name.startswith("flamingo-fetch_") for t in threading.enumerate()) <= 2
        assert pool.pending == 0
        assert pool.submit(slow.base + "/ok", policy).result(timeout=5).body == b"hello"
    finally:
        pool.shutdown()
