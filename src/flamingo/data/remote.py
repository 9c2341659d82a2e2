"""Shards that are not local files: object storage (``s3://``, ``gs://``), web servers (``https://``,
``http://``) and the output of a command (``pipe:COMMAND``).

Everything here streams: a shard is opened as a read-only byte stream and read front to back (tar shards are
parsed with ``tarfile`` mode ``"r|*"``, which never seeks), so a shard is never downloaded whole before its first
sample is used. URLs go through fsspec (``s3fs`` for S3 and S3-compatible stores, ``gcsfs`` for Google Cloud
Storage, fsspec's own HTTP filesystem for web servers); ``pipe:`` runs the command with a shell and reads its
standard output, and a command that exits with a non-zero status counts as a failed read.

Credentials are never part of a flamingo config: fsspec and the storage libraries find them where they always
do (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_PROFILE`` and ``~/.aws``, ``AWS_ENDPOINT_URL`` for an
S3-compatible store, ``GOOGLE_APPLICATION_CREDENTIALS``, and fsspec's ``FSSPEC_<PROTOCOL>_<OPTION>`` variables).

Reads fail in two ways. A *transient* failure (a reset or refused connection, a timeout, a cut response, an HTTP
5xx or 429 answer, a pipe command that failed) may go away when tried again: :func:`is_transient` tells them
apart and :class:`RetryPolicy` says how often and how long to wait. Anything else (no such object, access denied)
is final.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from flamingo.errors import FlamingoError, UsageError

PIPE_PREFIX = "pipe:"
OBJECT_STORES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}
"""Schemes of object stores, with the package that reads them (globs are listed through the store)."""
WEB_SCHEMES = ("http", "https")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_GLOB_CHARS = re.compile(r"[*?\[]")
_RETRY_STATUS = 429
"""HTTP "too many requests": worth another try, like a 5xx answer."""


class RemoteError(FlamingoError, OSError):
    """A URL that cannot be used as given (an unknown scheme, a missing package)."""


class TransientReadError(OSError):
    """A read that failed in a way that may not happen again (connection, timeout, 5xx, a failed pipe)."""


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names a remote shard or a pipe (``s3://``, ``gs://``, ``http(s)://``, ``pipe:``)."""
    if not isinstance(location, str):
        return False
    if location.startswith(PIPE_PREFIX):
        return True
    match = _SCHEME.match(location)
    return match is not None and match.group(1).lower() != "file"


def _scheme(url: str) -> str:
    match = _SCHEME.match(url)
    if match is None:
        raise RemoteError(
            f"{url}: not a URL; write s3://bucket/key, gs://bucket/key, https://host/path or pipe:CMD"
        )
    return match.group(1).lower()


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem serving ``url`` and the path of ``url`` on it.

    Raises :class:`RemoteError` naming the package to install when the scheme's library is missing.
    """
    scheme = _scheme(url)
    if scheme not in OBJECT_STORES and scheme not in WEB_SCHEMES:
        known = ", ".join(f"{s}://" for s in (*OBJECT_STORES, *WEB_SCHEMES))
        raise RemoteError(f"{url}: the scheme {scheme}:// is not supported; use {known} or pipe:COMMAND")
    try:
        import fsspec.core

        return fsspec.core.url_to_fs(url)
    except ImportError as error:
        package = OBJECT_STORES.get(scheme, "aiohttp")
        # s3fs and aiohttp come with the `remote` extra; gcsfs is installed on its own.
        how = f"pip install {package}" if package == "gcsfs" else "pip install 'flamingo-vlm[remote]'"
        raise RemoteError(
            f"{url}: reading {scheme}:// needs the package {package!r} ({error}); install it with `{how}`"
        ) from None


# ----------------------------------------------------------------------------------------------- errors


def _http_status(error: BaseException) -> int | None:
    """The HTTP status carried by an aiohttp or botocore error, if any."""
    status = getattr(error, "status", None)
    if isinstance(status, int):
        return status
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code if isinstance(code, int) else None
    return None


_TRANSIENT_NAMES = {
    # aiohttp (fsspec's HTTP filesystem, s3fs underneath)
    "ClientPayloadError",
    "ClientConnectionError",
    "ServerDisconnectedError",
    "ServerTimeoutError",
    "ClientOSError",
    # botocore (s3fs)
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ResponseStreamingError",
    "IncompleteReadError",
}
"""Error classes (matched by name anywhere in the class's bases, so neither library must be importable)."""


def is_transient(error: BaseException) -> bool:
    """Whether a failed read may succeed when tried again.

    True for connection resets and refusals, timeouts, responses cut short, HTTP 5xx and 429 answers and failed
    pipe commands, also when a library wrapped them (the error's causes are looked at). False for a missing
    object, denied access, a bad request, and errors that are not about the transfer.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        cause = current.__cause__ or current.__context__
        final = FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError
        if isinstance(current, final):
            # fsspec's HTTP filesystem reports a refused connection as "not found": its cause tells.
            if cause is None:
                return False
            current = cause
            continue
        if isinstance(current, TransientReadError | ConnectionError | TimeoutError | asyncio.TimeoutError):
            return True
        if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(current).__mro__):
            return True
        status = _http_status(current)
        if status is not None:
            return status >= 500 or status == _RETRY_STATUS
        # s3fs reports a store's unexplained failure (a 5xx after its own retries) as EIO.
        if isinstance(current, OSError) and current.errno == errno.EIO:
            return True
        current = cause
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """How often a remote shard is reopened after a transient failure, and how long to wait first."""

    retries: int = 3
    """Reopenings after the first failure; 0 gives up at once."""
    backoff: float = 1.0
    """Seconds before the first retry; each further retry waits twice as long as the one before."""

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based): ``backoff * 2**attempt``."""
        return self.backoff * (2**attempt)


# ----------------------------------------------------------------------------------------------- reading


class _GuardedStream(io.RawIOBase):
    """A read-only stream that reports transfer failures as :class:`TransientReadError` (other errors pass)."""

    def __init__(self, url: str, inner: IO[bytes]):
        super().__init__()
        self.url, self.inner = url, inner

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self.inner.read(size)
        except Exception as error:
            if is_transient(error):
                raise TransientReadError(f"{self.url}: {_describe(error)}") from error
            raise

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self.inner.close()
            finally:
                super().close()


class _PipeStream(io.RawIOBase):
    """A command's standard output; reaching its end with a non-zero exit status raises
    :class:`TransientReadError` (so a cut-off stream never passes for a short, complete one)."""

    def __init__(self, command: str):
        super().__init__()
        self.command = command
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the stream
        self.process = subprocess.Popen(
            command, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.stderr
        )

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        assert self.process.stdout is not None
        data = self.process.stdout.read(size) if size >= 0 else self.process.stdout.read()
        if not data and size != 0:
            status = self.process.wait()
            if status != 0:
                self.stderr.seek(0)
                tail = self.stderr.read()[-300:].decode("utf-8", "replace").strip()
                raise TransientReadError(
                    f"{PIPE_PREFIX}{self.command}: exited with status {status}"
                    + (f": {tail}" if tail else "")
                )
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self.process.poll() is None:  # the reader stopped early: the rest of the output is not wanted
                self.process.kill()
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process.wait()
            self.stderr.close()
        finally:
            super().close()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def open_stream(url: str) -> io.RawIOBase:
    """``url`` opened for reading front to back (close it, or use it in a ``with`` block).

    Object stores are read in ranged requests of fsspec's block size, web servers in one streamed ``GET``
    (no range support needed), pipes from the command's standard output. Errors of the transfer, when opening or
    while reading, come as :class:`TransientReadError` when :func:`is_transient` says so; a URL naming no object
    raises ``FileNotFoundError``.
    """
    if url.startswith(PIPE_PREFIX):
        command = url[len(PIPE_PREFIX) :].strip()
        if not command:
            raise UsageError(f"{url!r}: write the command after 'pipe:', e.g. 'pipe:cat shard-000000.tar'")
        return _PipeStream(command)
    fs, path = filesystem(url)
    try:
        # block_size 0: fsspec's HTTP filesystem streams one GET instead of ranged requests.
        options = {"block_size": 0} if _scheme(url) in WEB_SCHEMES else {}
        inner = fs.open(path, "rb", **options)
    except Exception as error:
        if is_transient(error):
            raise TransientReadError(f"{url}: {_describe(error)}") from error
        raise
    return _GuardedStream(url, inner)


def url_exists(url: str) -> bool:
    """Whether the object ``url`` names exists (a pipe always "exists": its command runs when it is read)."""
    if url.startswith(PIPE_PREFIX):
        return True
    fs, path = filesystem(url)
    return bool(fs.exists(path))


def expand_url(pattern: str, suffixes: Sequence[str]) -> list[str]:
    """The shards a URL names (after brace expansion): itself, or what the store lists for it.

    On object stores a pattern with ``*``, ``?`` or ``[`` is listed with the store's glob, and a URL ending in
    ``/`` is a folder: every object under it whose name ends in one of ``suffixes``. Web URLs and pipes are
    taken as they are (``?`` starts a query string there). Listings are sorted.
    """
    if pattern.startswith(PIPE_PREFIX) or _scheme(pattern) not in OBJECT_STORES:
        return [pattern]
    if pattern.endswith("/"):
        fs, path = filesystem(pattern)
        found = [p for p in fs.find(path) if p.endswith(tuple(suffixes))]
        return sorted(fs.unstrip_protocol(p) for p in found)
    if _GLOB_CHARS.search(pattern):
        fs, path = filesystem(pattern)
        return sorted(fs.unstrip_protocol(p) for p in fs.glob(path))
    return [pattern]


# ----------------------------------------------------------------------------------------------- writing


def join_url(base: str, *parts: str) -> str:
    """``base/part/...`` with exactly one ``/`` between the pieces."""
    return "/".join([base.rstrip("/"), *(part.strip("/") for part in parts)])


def upload_file(local: str | os.PathLike[str], url: str) -> str:
    """Copy the local file to ``url`` and return ``url``.

    Object stores make an object visible only when its upload is complete, so a reader never sees half a file.
    """
    if url.startswith(PIPE_PREFIX) or _scheme(url) in WEB_SCHEMES:
        raise UsageError(f"{url}: cannot write there; write to a folder, or to s3:// or gs:// object storage")
    fs, path = filesystem(url)
    fs.put_file(os.fspath(local), path)
    return url


def remove_urls(urls: Sequence[str]) -> None:
    """Delete the objects ``urls`` name (all on one store)."""
    if not urls:
        return
    fs, _ = filesystem(urls[0])
    fs.rm([filesystem(url)[1] for url in urls])


def list_urls(pattern: str) -> list[str]:
    """The objects an object-store glob matches (sorted; an empty list when none does)."""
    fs, path = filesystem(pattern)
    return sorted(fs.unstrip_protocol(p) for p in fs.glob(path))


def local_path(location: str | os.PathLike[str]) -> Path:
    """``location`` as a local path; refuses a URL with a one-line error naming it."""
    if is_url(location):
        raise UsageError(f"{location}: this needs a local file; copy it to local disk first")
    return Path(location)
