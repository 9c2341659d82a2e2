"""The server's memory budget: what requests hold at once (bodies, images being decoded, images waiting for the
model) is counted against one limit, and a request that would go over it is refused at once.

A request takes a :class:`Reservation` and grows it as it takes memory: its body as the bytes arrive, an image
by the size decoding it takes (known from the header, before any pixel is decoded), shrunk to the reduced
image's size once decoded. The worker releases a request's reservation when its answer is done. Going over
the budget raises :class:`~flamingo.io.inputs.InputError` 503 with ``Retry-After`` (the memory frees up as
requests finish); a request that alone needs more than the whole budget gets 413 (retrying cannot help).
"""

from __future__ import annotations

import threading

from flamingo.io.inputs import InputError

RETRY_AFTER_S = 1
"""Seconds a refused client is asked to wait (``Retry-After``): queued requests finish in about that time."""


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class MemoryBudget:
    """``max_bytes`` shared by every request in flight; thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_pending_bytes={max_bytes}: must be >= 1")
        self.max_bytes = max_bytes
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        """Bytes reserved now."""
        with self._lock:
            return self._used

    def reservation(self) -> Reservation:
        """A new, empty reservation for one request."""
        return Reservation(self)

    def _take(self, reservation: Reservation, n: int) -> None:
        with self._lock:
            if reservation.closed:
                raise InputError("the request was already answered", "request_closed", 499)
            if reservation.held + n > self.max_bytes:
                raise InputError(
                    f"the request needs over {_mb(reservation.held + n)} of memory; the server's budget is "
                    f"{_mb(self.max_bytes)}: send fewer or smaller images",
                    "request_too_large",
                    413,
                )
            if self._used + n > self.max_bytes:
                raise InputError(
                    f"the server is busy ({_mb(self._used)} of its {_mb(self.max_bytes)} memory budget in use); "
                    "retry shortly",
                    "server_busy",
                    503,
                    retry_after=RETRY_AFTER_S,
                )
            self._used += n
            reservation.held += n

    def _give(self, reservation: Reservation, n: int) -> None:
        with self._lock:
            n = min(n, reservation.held)
            self._used -= n
            reservation.held -= n


class Reservation:
    """The memory one request holds; :meth:`release` (idempotent) returns all of it."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.held = 0
        self.closed = False

    def grow(self, n: int) -> None:
        """Take ``n`` more bytes, or raise ``InputError`` (503 busy, 413 more than the whole budget)."""
        if n > 0:
            self.budget._take(self, n)

    def shrink(self, n: int) -> None:
        """Give back ``n`` bytes (the request freed them)."""
        if n > 0:
            self.budget._give(self, n)

    def release(self) -> None:
        """Give back everything and refuse further growth (memory freed when the request is answered)."""
        with self.budget._lock:
            self.closed = True
            self.budget._used -= self.held
            self.held = 0
