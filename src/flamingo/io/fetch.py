"""The one fetcher for remote images: an address policy, one overall deadline, a byte cap, checked redirects.

Used by the dataset builder, the web server and the Python pipeline. One call of :func:`fetch` is one GET of an
http(s) URL that comes from untrusted input:

- **Addresses.** A host name is resolved once, every address it resolves to is checked against the
  :class:`~flamingo.io.addresses.AddressPolicy`, and the connection then goes to a checked address (never
  re-resolved, so DNS rebinding cannot swap in a private address); the peer actually connected to is checked
  again. Each redirect is followed by hand and checked like the first URL.
- **Deadline.** ``deadline_s`` bounds the whole fetch in wall-clock time: name lookup, connect, TLS, every
  redirect, headers and every read. Socket timeouts alone cannot do that (a sender dripping a byte a second
  resets them on every byte), so a watchdog thread shuts the connection down when the deadline passes,
  whatever the reading code is waiting in.
- **Size.** ``max_bytes`` is checked against Content-Length before reading and counted while streaming; a
  body longer than its Content-Length is refused.

:class:`FetchPool` runs fetches on threads of their own (a bounded number), so a slow URL holds one of those
threads and nothing else. Failures raise :class:`FetchError` with a short ``reason`` code.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import ipaddress
import itertools
import os
import socket
import ssl
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from flamingo.io.addresses import AddressPolicy

REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 65536
_EXTRA_BYTES_WAIT_S = 0.2  # after the declared body: how long to wait for bytes a lying server adds


class FetchError(Exception):
    """A failed fetch.

    ``reason`` is one of ``unsupported_url``, ``unresolvable``, ``refused_address``, ``timeout``, ``tls_error``,
    ``connection_error``, ``http_<status>``, ``bad_redirect``, ``too_many_redirects``, ``bad_content_length``,
    ``too_large``, ``body_exceeds_content_length``, ``truncated`` or ``busy`` (no fetch thread free);
    ``retryable`` says whether trying again later may succeed. ``url`` is the URL (redirect hop) that failed;
    ``address`` the refused address, ``status`` the HTTP status, ``declared`` a refused Content-Length.
    """

    def __init__(
        self,
        reason: str,
        detail: str = "",
        retryable: bool = False,
        url: str = "",
        address: str | None = None,
        status: int | None = None,
        declared: int | None = None,
    ) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail, self.retryable, self.url = reason, detail, retryable, url
        self.address, self.status, self.declared = address, status, declared


@dataclass(frozen=True)
class FetchPolicy:
    """What one fetch may do."""

    deadline_s: float = 10.0
    """Wall-clock limit of one fetch, from the first name lookup to the last byte, redirects included."""
    idle_timeout_s: float | None = None
    """Limit of one connect or one read (a silent server fails early); None: the deadline alone."""
    max_bytes: int = 10 * 1024 * 1024
    """Largest body accepted: a larger Content-Length is refused unread, a longer stream is cut off."""
    max_redirects: int = 3
    """Redirect hops followed; each is checked like the first URL."""
    addresses: AddressPolicy = field(default_factory=AddressPolicy)
    """Which addresses may be contacted (public unicast only by default)."""
    user_agent: str = "flamingo-vlm"
    """User-Agent header of every request."""

    def __post_init__(self) -> None:
        if not self.deadline_s > 0:
            raise ValueError(f"FetchPolicy.deadline_s={self.deadline_s}: must be positive")
        if self.idle_timeout_s is not None and not self.idle_timeout_s > 0:
            raise ValueError(f"FetchPolicy.idle_timeout_s={self.idle_timeout_s}: must be positive or None")
        if self.max_bytes < 1 or self.max_redirects < 0:
            raise ValueError("FetchPolicy: max_bytes must be >= 1 and max_redirects >= 0")


@dataclass(frozen=True)
class Fetched:
    """A fetched body, its Content-Type header and the URL it came from after redirects."""

    body: bytes
    content_type: str
    final_url: str


# ---------------------------------------------------------------------------------------------- the watchdog
class _Watch:
    """The sockets of one fetch, shut down together when its deadline passes."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = False
        self.done = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            fired = self.fired
        if fired:
            _shut(sock)

    def fire(self) -> None:
        with self._lock:
            if self.done:
                return
            self.fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def cancel(self) -> None:
        with self._lock:
            self.done = True
            self._sockets.clear()

    def expired(self) -> bool:
        return self.fired or time.monotonic() >= self.deadline


def _shut(sock: socket.socket) -> None:
    """Wake every thread blocked on ``sock`` (their reads return end-of-file or fail).

    The base class's method on purpose: ``ssl.SSLSocket.shutdown`` also drops its TLS state, which the reading
    thread may be using at this moment.
    """
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread that fires each :class:`_Watch` at its deadline (a heap ordered by deadline)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Watch]] = []
        self._cond = threading.Condition()
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float) -> _Watch:
        watch = _Watch(deadline)
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._order), watch))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="flamingo-fetch-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
        return watch

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, _, watch = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
            if not watch.done:
                watch.fire()


_SHARED: dict[str, object] = {}
_SHARED_LOCK = threading.Lock()


def _forget_shared() -> None:
    """In a forked child: the parent's watchdog and resolver threads do not exist here; start new ones."""
    global _SHARED_LOCK
    _SHARED_LOCK = threading.Lock()
    _SHARED.clear()


os.register_at_fork(after_in_child=_forget_shared)


def _shared(name: str, make: type) -> object:
    """The process's one instance of ``make``, created on first use."""
    with _SHARED_LOCK:
        if name not in _SHARED:
            _SHARED[name] = make()
        return _SHARED[name]


def _watchdog() -> _Watchdog:
    return _shared("watchdog", _Watchdog)  # type: ignore[return-value]


def _resolver() -> ThreadPoolExecutor:
    return _shared("resolver", _Resolver)  # type: ignore[return-value]


class _Resolver(ThreadPoolExecutor):
    """Name lookups, a few at a time."""

    def __init__(self) -> None:
        super().__init__(max_workers=8, thread_name_prefix="flamingo-resolve")


# ---------------------------------------------------------------------------------------------- one request
def _remaining(deadline: float, url: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError("timeout", f"{url}: past the fetch deadline", retryable=True, url=url)
    return left


def _op_timeout(policy: FetchPolicy, deadline: float, url: str) -> float:
    """The socket timeout for the next connect or read: the idle limit, cut to what is left of the deadline."""
    left = _remaining(deadline, url)
    return left if policy.idle_timeout_s is None else min(left, policy.idle_timeout_s)


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    address: str


def _lookup(host: str, port: int, deadline: float, url: str) -> list[tuple]:
    """``getaddrinfo`` within the deadline (a name lookup cannot be interrupted, so it runs on a resolver
    thread that is left behind if it takes too long); IP literals are answered without a lookup."""
    try:
        ipaddress.ip_address(host.split("%")[0])
        literal = True
    except ValueError:
        literal = False
    try:
        if literal:
            return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        future = _resolver().submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        return future.result(timeout=_remaining(deadline, url))
    except FutureTimeout as err:
        raise FetchError("timeout", f"resolving {host}", retryable=True, url=url) from err
    except (OSError, UnicodeError) as err:
        raise FetchError("unresolvable", f"cannot resolve {host!r}: {err}", retryable=True, url=url) from err


def resolve(host: str, port: int, addresses: AddressPolicy, deadline: float, url: str = "") -> _Target:
    """Resolve ``host`` and return a permitted address to connect to; ``refused_address`` if *any* address it
    resolves to is refused (a name resolving to a public and a private address cannot reach the private one)."""
    infos = _lookup(host, port, deadline, url)
    if not infos:
        raise FetchError("unresolvable", f"cannot resolve {host!r}: no addresses", retryable=True, url=url)
    for *_, sockaddr in infos:
        reason = addresses.refusal(str(sockaddr[0]))
        if reason is not None:
            raise FetchError(
                "refused_address",
                f"{host} resolves to {sockaddr[0]} ({reason})",
                url=url,
                address=str(sockaddr[0]),
            )
    return _Target(host, port, str(infos[0][4][0]))


def _connect(
    target: _Target, timeout: float, addresses: AddressPolicy, watch: _Watch, url: str
) -> socket.socket:
    """A TCP connection to the checked address, watched by the deadline, with the peer checked once connected."""
    sock = socket.create_connection((target.address, target.port), timeout=timeout)
    watch.add(sock)
    peer = str(sock.getpeername()[0])
    reason = addresses.refusal(peer)
    if reason is not None:
        sock.close()
        raise FetchError(
            "refused_address", f"connected peer {peer} is refused ({reason})", url=url, address=peer
        )
    return sock


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to an address checked in advance; the Host header keeps the name."""

    def __init__(
        self, target: _Target, timeout: float, addresses: AddressPolicy, watch: _Watch, url: str
    ) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._target, self._addresses, self._watch, self._url = target, addresses, watch, url

    def connect(self) -> None:
        self.sock = _connect(self._target, self.timeout, self._addresses, self._watch, self._url)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """The HTTPS twin of :class:`_PinnedHTTP`; the certificate is verified against the host name."""

    def __init__(
        self, target: _Target, timeout: float, addresses: AddressPolicy, watch: _Watch, url: str
    ) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(target.host, target.port, timeout=timeout, context=self._tls)
        self._target, self._addresses, self._watch, self._url = target, addresses, watch, url

    def connect(self) -> None:
        sock = _connect(self._target, self.timeout, self._addresses, self._watch, self._url)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self._target.host)
        self._watch.add(self.sock)


def _read_body(
    conn: http.client.HTTPConnection,
    resp: http.client.HTTPResponse,
    policy: FetchPolicy,
    deadline: float,
    url: str,
) -> bytes:
    """Stream the body under the size cap; refuse a body longer than its declared Content-Length."""
    declared_text = resp.getheader("Content-Length")
    declared = None
    if declared_text is not None and not resp.chunked:
        try:
            declared = int(declared_text)
        except ValueError as err:
            raise FetchError("bad_content_length", repr(declared_text), url=url) from err
        if declared > policy.max_bytes:
            raise FetchError(
                "too_large", f"declared {declared} bytes > {policy.max_bytes}", url=url, declared=declared
            )
    chunks: list[bytes] = []
    size = 0
    while True:
        timeout = _op_timeout(policy, deadline, url)
        past_declared = declared is not None and size >= declared
        if conn.sock is not None:
            # A keep-alive server sends nothing after the body: wait only briefly for extra bytes.
            conn.sock.settimeout(min(timeout, _EXTRA_BYTES_WAIT_S) if past_declared else timeout)
        try:
            # Read the socket directly (not resp.read) so bytes beyond Content-Length are seen, not cut; read1
            # returns what one receive brings instead of waiting for a whole chunk.
            chunk = resp.read(_CHUNK) if resp.chunked or resp.fp is None else resp.fp.read1(_CHUNK)
        except TimeoutError:
            if past_declared:
                break
            raise
        if not chunk:
            break
        size += len(chunk)
        chunks.append(chunk)
        if size > policy.max_bytes:
            raise FetchError("too_large", f"body exceeds {policy.max_bytes} bytes", url=url)
        if declared is not None and size > declared:
            raise FetchError(
                "body_exceeds_content_length", f"more than the declared {declared} bytes", url=url
            )
    if declared is not None and size < declared:
        raise FetchError("truncated", f"{size} of {declared} bytes", retryable=True, url=url)
    return b"".join(chunks)


def _get_once(url: str, policy: FetchPolicy, deadline: float) -> tuple[int, str | None, bytes, str]:
    """One GET without following redirects: (status, Location, body, Content-Type)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise FetchError("unsupported_url", f"only http(s) URLs with a host are fetched: {url}", url=url)
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as err:
        raise FetchError("unsupported_url", str(err), url=url) from err
    target = resolve(parts.hostname, port, policy.addresses, deadline, url)
    watch = _watchdog().watch(deadline)
    conn_class = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
    conn = conn_class(target, _op_timeout(policy, deadline, url), policy.addresses, watch, url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {
        "User-Agent": policy.user_agent,
        "Accept": "image/*",
        "Accept-Encoding": "identity",
        "Connection": "close",
    }
    try:
        conn.request("GET", path, headers=headers)
        if conn.sock is not None:
            conn.sock.settimeout(_op_timeout(policy, deadline, url))
        resp = conn.getresponse()
        content_type = resp.getheader("Content-Type") or ""
        if resp.status in REDIRECTS:
            return resp.status, resp.getheader("Location"), b"", content_type
        if resp.status != 200:
            retryable = resp.status >= 500 or resp.status == 429
            raise FetchError(f"http_{resp.status}", url, retryable=retryable, url=url, status=resp.status)
        body = _read_body(conn, resp, policy, deadline, url)
        if watch.fired:  # the watchdog's shutdown can look like a short, complete body
            raise FetchError("timeout", f"{url}: past the fetch deadline", retryable=True, url=url)
        return resp.status, None, body, content_type
    except FetchError as err:
        if watch.fired and err.reason in ("truncated", "connection_error"):
            raise FetchError("timeout", f"{url}: past the fetch deadline", retryable=True, url=url) from err
        raise
    except (OSError, http.client.HTTPException) as err:
        if isinstance(err, TimeoutError) or watch.expired():
            raise FetchError("timeout", f"{url}: {err or 'timed out'}", retryable=True, url=url) from err
        if isinstance(err, ssl.SSLError):
            raise FetchError("tls_error", str(err), url=url) from err
        raise FetchError("connection_error", f"{type(err).__name__}: {err}", retryable=True, url=url) from err
    finally:
        watch.cancel()
        conn.close()


def fetch(url: str, policy: FetchPolicy, deadline: float | None = None) -> Fetched:
    """GET ``url`` under ``policy``, following at most ``policy.max_redirects`` redirects, each checked like the
    first; raises :class:`FetchError`. ``deadline`` (a ``time.monotonic()`` value) overrides
    ``now + policy.deadline_s``, so time spent waiting for a fetch thread counts too."""
    deadline = time.monotonic() + policy.deadline_s if deadline is None else deadline
    current = url
    for _hop in range(policy.max_redirects + 1):
        status, location, body, content_type = _get_once(current, policy, deadline)
        if location is None and status in REDIRECTS:
            raise FetchError("bad_redirect", f"{status} without Location", url=current)
        if location is None:
            return Fetched(body, content_type, current)
        current = urljoin(current, location)
    raise FetchError("too_many_redirects", f"more than {policy.max_redirects} redirects", url=current)


class FetchPool:
    """Fetches on ``workers`` threads of their own, with at most ``max_pending`` submitted and unfinished.

    A fetch's deadline starts when it is submitted, so time spent waiting for a free thread counts against it;
    one still waiting at its deadline fails at once with ``timeout`` instead of starting.
    """

    def __init__(self, workers: int = 16, max_pending: int = 256) -> None:
        if workers < 1 or max_pending < 1:
            raise ValueError(f"FetchPool(workers={workers}, max_pending={max_pending}): both must be >= 1")
        self.workers, self.max_pending = workers, max_pending
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flamingo-fetch")
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Fetches submitted and not yet finished."""
        with self._lock:
            return self._pending

    def submit(self, url: str, policy: FetchPolicy) -> Future[Fetched]:
        """Start fetching ``url``; raises ``FetchError("busy")`` at once when ``max_pending`` are unfinished."""
        deadline = time.monotonic() + policy.deadline_s
        with self._lock:
            if self._pending >= self.max_pending:
                raise FetchError("busy", f"{self._pending} fetches in progress", retryable=True, url=url)
            self._pending += 1
        try:
            future = self._executor.submit(self._run, url, policy, deadline)
        except BaseException:
            self._finished(None)
            raise
        future.add_done_callback(self._finished)
        return future

    def _run(self, url: str, policy: FetchPolicy, deadline: float) -> Fetched:
        if time.monotonic() >= deadline:
            raise FetchError("timeout", f"{url}: no fetch thread was free before the deadline", True, url=url)
        return fetch(url, policy, deadline)

    def _finished(self, _future: Future | None) -> None:
        with self._lock:
            self._pending -= 1

    def shutdown(self) -> None:
        """Stop taking fetches; queued ones are cancelled, running ones finish by their deadline."""
        self._executor.shutdown(wait=False, cancel_futures=True)
