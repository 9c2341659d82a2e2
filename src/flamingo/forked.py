"""``ForkedIterator``: the items of a generator, produced ahead by a forked child process.

The training loop's data workers (``data.worker: process``) and the quickstart's second process (world and LM
beside the CLIP) both run this way: the child inherits everything it needs through ``fork``, so only the items
travel, as plain pickles through a queue (a copy per item, no shared-memory file descriptors to run out of).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import queue
import traceback
from collections.abc import Callable, Iterator
from typing import Any

_DONE = "__flamingo_forked_done__"


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
        self.process = context.Process(
            target=ForkedIterator._produce,
            args=(make_iterator, self.items, self.stop, os.getpid(), name, threads, niceness),
            name=name,
            daemon=True,
        )
        self.process.start()
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
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        items.cancel_join_thread()  # exiting must not wait for a reader of what is still buffered
        if niceness:
            with contextlib.suppress(OSError):
                os.nice(niceness)

        def wanted() -> bool:
            return not stop.is_set() and os.getppid() == parent

        def put(item: Any, error: BaseException | None = None) -> bool:
            payload = pickle.dumps((item, error), protocol=pickle.HIGHEST_PROTOCOL)
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
                item, error = pickle.loads(self.items.get(timeout=1.0))
                break
            except queue.Empty:
                if not self.process.is_alive():
                    self.finished = True
                    raise RuntimeError(
                        f"the {self.name} process died (exit code {self.process.exitcode}) without an error; "
                        "it may have run out of memory"
                    ) from None
        if error is not None:
            self.finished = True
            raise error
        if isinstance(item, str) and item == _DONE:
            self.finished = True
            raise StopIteration
        return item

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
