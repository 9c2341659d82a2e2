"""``ForkedIterator``: the items of a generator, produced ahead by a forked child process.

The training loop's data workers (``data.worker: process``) and the quickstart's second process (world and LM
beside the CLIP) both run this way: the child inherits everything it needs through ``fork``, so only the items
travel, as pickles through a queue.

Large tensors (a batch's pixels: tens of MB) do not go through the pickle. The child writes each one into an
anonymous memory file (``memfd_create``) and passes the file's descriptor over a Unix socket; the parent maps it,
closes the descriptor, and the tensor lives in that mapping until it is freed. That is one copy per tensor (the
child's write) instead of five (pickle, queue pickle, pipe write, pipe read, unpickle), and nothing is named in
``/dev/shm`` (no size limit to hit there, and nothing left behind by a killed run: a descriptor in flight is
freed with the socket). Where memory files or descriptor passing are missing (not Linux), everything travels in
the pickle.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import pickle
import queue
import socket
import traceback
from collections.abc import Callable, Iterator
from typing import Any

_DONE = "__flamingo_forked_done__"
_INLINE_BYTES = 1 << 16
"""Tensors smaller than this travel inside the pickle; larger ones in memory files (see the module docstring)."""


def _fd_transport() -> bool:
    """Whether tensors can travel in memory files: ``memfd_create``, descriptor passing and ``/proc/self/fd``."""
    return hasattr(os, "memfd_create") and hasattr(socket, "send_fds") and os.path.isdir("/proc/self/fd")


class _TensorPickler(pickle.Pickler):
    """Pickles ``obj`` with every large CPU tensor written to a memory file of its own (collected in ``fds``)."""

    def __init__(self, file: io.BytesIO, fds: list[int]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.fds = fds

    def persistent_id(self, obj: Any) -> Any:
        import torch

        if (
            type(obj) is not torch.Tensor
            or obj.device.type != "cpu"
            or obj.layout != torch.strided
            or obj.requires_grad
            or obj.is_conj()
            or obj.is_neg()
            or obj.is_quantized
            or obj.nbytes < _INLINE_BYTES
        ):
            return None
        data = obj.contiguous().reshape(-1).view(torch.uint8).numpy()
        fd = os.memfd_create("flamingo-tensor", os.MFD_CLOEXEC)
        try:
            view, written = memoryview(data), 0
            while written < len(view):
                written += os.write(fd, view[written:])
        except BaseException:
            os.close(fd)
            raise
        self.fds.append(fd)
        return ("memfd", len(self.fds) - 1, obj.dtype, tuple(obj.shape), obj.nbytes)


class _TensorUnpickler(pickle.Unpickler):
    """Loads what :class:`_TensorPickler` wrote, mapping each memory file (``fds``, in order) as a tensor."""

    def __init__(self, file: io.BytesIO, fds: list[int]) -> None:
        super().__init__(file)
        self.fds = fds

    def persistent_load(self, pid: Any) -> Any:
        import torch

        kind, index, dtype, shape, nbytes = pid
        if kind != "memfd" or not 0 <= index < len(self.fds):
            raise pickle.UnpicklingError(f"unknown tensor reference {pid!r}")
        flat = torch.from_file(
            f"/proc/self/fd/{self.fds[index]}", shared=True, size=nbytes, dtype=torch.uint8
        )
        return flat.view(dtype).view(shape)


class ForkedIterator:
    """The items of ``make_iterator()``, produced by a forked daemon process up to ``depth`` ahead.

    ``threads``: torch threads in the child; ``niceness``: added to the child's niceness (a worker that runs ahead
    of the training step leaves the step the CPU). An error in the child is raised here with the child's traceback
    as a note (as ``RuntimeError`` when the error cannot be pickled); a child that dies without one is reported
    by its exit code. The child exits when :meth:`close` is called or when its parent is gone, so a killed run
    leaves no process behind.
    """

    @staticmethod
    def available() -> bool:
        """Whether this platform can fork (not Windows)."""
        return "fork" in multiprocessing.get_all_start_methods()

    def __init__(
        self,
        make_iterator: Callable[[], Iterator[Any]],
        depth: int,
        name: str,
        threads: int = 1,
        niceness: int = 0,
    ) -> None:
        if depth < 1:
            raise ValueError(f"ForkedIterator needs depth >= 1, got {depth}")
        context = multiprocessing.get_context("fork")
        self.name = name
        self.items = context.Queue(maxsize=depth)
        self.stop = context.Event()
        # Memory files travel over one end of this socket pair (the child's), read at the other.
        pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) if _fd_transport() else (None, None)
        self.fd_socket, child_socket = pair
        self.process = context.Process(
            target=ForkedIterator._produce,
            args=(make_iterator, self.items, self.stop, os.getpid(), name, threads, niceness, child_socket),
            name=name,
            daemon=True,
        )
        self.process.start()
        if child_socket is not None:
            child_socket.close()  # the child has its own copy
            self.fd_socket.settimeout(60.0)  # sent before their payload: they are there when it is
        self.finished = False

    @staticmethod
    def _produce(
        make_iterator: Callable[[], Iterator[Any]],
        items: Any,
        stop: Any,
        parent: int,
        name: str,
        threads: int,
        niceness: int,
        fd_socket: socket.socket | None,
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        if fd_socket is not None:
            fd_socket.settimeout(0.2)
        items.cancel_join_thread()  # exiting must not wait for a reader of what is still buffered
        if niceness:
            with contextlib.suppress(OSError):
                os.nice(niceness)

        def wanted() -> bool:
            return not stop.is_set() and os.getppid() == parent

        def encode(item: Any, error: BaseException | None) -> tuple[int, bytes]:
            """``(number of memory files sent, pickle)`` of one item (see the module docstring)."""
            if fd_socket is not None:
                fds: list[int] = []
                buffer = io.BytesIO()
                try:
                    _TensorPickler(buffer, fds).dump((item, error))
                    # The descriptors go first, so that they wait in the socket when the parent reads the
                    # payload; once sent, the socket holds the files and the child's descriptors can close.
                    while fds and wanted():
                        try:
                            socket.send_fds(fd_socket, [len(fds).to_bytes(4, "little")], fds)
                            break
                        except TimeoutError:
                            continue
                    return len(fds), buffer.getvalue()
                except OSError:
                    pass  # out of descriptors or memory (EMFILE, ETOOMANYREFS, ...): this item is pickled
                finally:
                    for fd in fds:
                        os.close(fd)
            return 0, pickle.dumps((item, error), protocol=pickle.HIGHEST_PROTOCOL)

        def put(item: Any, error: BaseException | None = None) -> bool:
            payload = encode(item, error)
            while wanted():
                try:
                    items.put(payload, timeout=0.2)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for item in make_iterator():
                if not put(item):
                    return
        except BaseException as error:  # handed to the consumer, with where it happened in the child
            error.add_note(f"in the {name} process:\n{traceback.format_exc()}")
            try:
                pickle.dumps(error)
            except Exception:
                error = RuntimeError(f"the {name} process failed:\n{traceback.format_exc()}")
            put(_DONE, error)
        else:
            put(_DONE)
        while wanted():  # stay until closed, so the queue is read to the end
            stop.wait(0.5)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self.finished:
            raise StopIteration
        while True:
            try:
                count, payload = self.items.get(timeout=1.0)
                break
            except queue.Empty:
                if not self.process.is_alive():
                    self.finished = True
                    raise RuntimeError(
                        f"the {self.name} process died (exit code {self.process.exitcode}) without an error; "
                        "it may have run out of memory"
                    ) from None
        item, error = self._load(count, payload)
        if error is not None:
            self.finished = True
            raise error
        if isinstance(item, str) and item == _DONE:
            self.finished = True
            raise StopIteration
        return item

    def _load(self, count: int, payload: bytes) -> tuple[Any, BaseException | None]:
        """Unpickle one payload, mapping its ``count`` memory files (waiting in the socket) as tensors."""
        if not count:
            return pickle.loads(payload)
        if self.fd_socket is None:
            raise RuntimeError(f"the {self.name} process sent tensors in memory files, which were not set up")
        _, fds, flags, _ = socket.recv_fds(self.fd_socket, 16, count)
        try:
            if len(fds) != count or flags & socket.MSG_CTRUNC:
                raise RuntimeError(
                    f"the {self.name} process sent {count} memory file(s), {len(fds)} arrived (is the limit on "
                    "open files, ulimit -n, too low?)"
                )
            return _TensorUnpickler(io.BytesIO(payload), fds).load()
        finally:
            for fd in fds:
                os.close(fd)

    def close(self, kill: bool = False) -> None:
        """Stop the child (at once with ``kill``, else after its current item, killing it after 10 s)."""
        self.stop.set()
        if not kill:
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self.items.cancel_join_thread()
        self.items.close()
        if self.fd_socket is not None:
            self.fd_socket.close()  # frees the memory files still in flight
