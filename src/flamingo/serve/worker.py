"""One thread owns the model: it takes queued requests, batches compatible ones, and routes results back.

A request waits in a queue; the worker takes the oldest and, for up to ``max_wait_ms``, gathers more queued
requests with identical decoding settings (up to ``max_batch_size``) to run as one left-padded ``generate``.
Streaming requests run alone (Hugging Face streamers handle one row). If a batch fails, its requests are retried
one by one so that one bad request cannot fail the others.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from transformers import StoppingCriteria, StoppingCriteriaList

from flamingo.io.inputs import InputError
from flamingo.pipeline import Completion, FlamingoPipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodingSettings:
    """Decoding settings of one request; requests with equal settings may share a batch."""

    max_new_tokens: int = 20
    num_beams: int = 1
    temperature: float = 0.0
    """0 means greedy (or beam) search; above 0 samples with this temperature."""
    top_p: float = 1.0

    def generation_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams}
        if self.temperature > 0:
            kwargs |= {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
        else:
            kwargs["do_sample"] = False
        return kwargs


@dataclass
class Job:
    """A queued request. Non-streaming jobs get ``future``; streaming jobs get messages on ``events``:
    ``("text", piece)``..., then ``("done", Completion)`` or ``("error", exception)``."""

    row: list[Any]
    settings: DecodingSettings
    stream: bool = False
    future: Future = field(default_factory=Future)
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.monotonic)
    batch_size: int = 0
    reservation: Any = None
    """The request's share of the server's memory budget (a :class:`~flamingo.serve.budget.Reservation`),
    released by the worker once the job is answered, failed or dropped."""

    def finish(self) -> None:
        """Release what the job holds (its images are no longer needed)."""
        if self.reservation is not None:
            self.reservation.release()


class _Cancelled(StoppingCriteria):
    """Stops generation once the client has gone (a closed stream)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
        return self.event.is_set()


class QueueFullError(InputError):
    """More requests are waiting than the server accepts."""


class BatchWorker:
    """The single model-owning thread; :meth:`submit` is safe from any thread."""

    def __init__(
        self,
        pipeline: FlamingoPipeline,
        max_batch_size: int = 8,
        max_wait_ms: float = 10.0,
        max_queue: int = 256,
    ) -> None:
        self.pipeline = pipeline
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_ms / 1000, max_queue
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self.stats = {"requests": 0, "batches": 0, "batched_requests": 0, "largest_batch": 0}

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="flamingo-model-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, job: Job) -> Job:
        with self._cond:
            if len(self._pending) >= self.max_queue:
                raise QueueFullError(
                    f"the server is busy ({len(self._pending)} requests queued); retry shortly",
                    "queue_full",
                    503,
                    retry_after=1,
                )
            self._pending.append(job)
            self._cond.notify_all()
        return job

    def snapshot(self) -> dict[str, int]:
        """Counters for /health: requests, batches, requests that shared a batch, largest batch, queue depth."""
        with self._cond:
            return {**self.stats, "queued": len(self._pending)}

    # ------------------------------------------------------------------ the worker thread
    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as err:  # never let the worker die: fail these jobs and go on
                log.exception("worker error")
                for job in batch:
                    _fail(job, err)
            finally:
                for job in batch:
                    job.finish()

    def _take_batch(self) -> list[Job] | None:
        """The oldest live job plus compatible jobs that arrive within ``max_wait_s``; None on shutdown."""
        with self._cond:
            while True:
                while self._running and not self._pending:
                    self._cond.wait()
                if not self._running:
                    return None
                first = self._pending.popleft()
                if not first.cancelled.is_set():
                    break
                first.finish()
            batch = [first]
            if first.stream:
                return batch
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                batch += self._pop_compatible(first.settings, self.max_batch_size - len(batch))
                remaining = deadline - time.monotonic()
                if len(batch) >= self.max_batch_size or remaining <= 0:
                    break
                self._cond.wait(remaining)
            return batch

    def _pop_compatible(self, settings: DecodingSettings, limit: int) -> list[Job]:
        """Queued non-streaming jobs with ``settings`` (oldest first), removed from the queue."""
        taken = [j for j in self._pending if not j.stream and j.settings == settings][:limit]
        live = []
        for job in taken:
            self._pending.remove(job)
            if job.cancelled.is_set():
                job.finish()
            else:
                live.append(job)
        return live

    def _admit(self, batch: list[Job]) -> list[Job]:
        """The jobs whose prompts fit ``max_prompt_tokens``; the others fail now, alone, with a clear error.

        Checked here because the tokenizer is not safe to share between request threads and this one.
        """
        limit = self.pipeline.max_prompt_tokens
        if limit is None:
            return batch
        admitted = []
        for job in batch:
            length = self.pipeline.count_prompt_tokens(job.row)
            if length > limit:
                message = (
                    f"the prompt is {length} tokens; the limit is {limit}: use fewer images or shorter text"
                )
                _fail(job, InputError(message, "prompt_too_long", 413))
            else:
                admitted.append(job)
        return admitted

    def _run(self, batch: list[Job]) -> None:
        batch = self._admit(batch)
        if not batch:
            return
        self._count(len(batch))
        if batch[0].stream:
            self._run_stream(batch[0])
            return
        try:
            completions = self.pipeline.generate(
                [j.row for j in batch], **batch[0].settings.generation_kwargs()
            )
        except Exception as err:
            if len(batch) == 1:
                _fail(batch[0], err)
                return
            log.warning("a batch of %d failed (%s); retrying its requests one by one", len(batch), err)
            for job in batch:
                self._run([job])
            return
        for job, completion in zip(batch, completions):
            job.batch_size = len(batch)
            if not job.future.done():
                job.future.set_result(completion)

    def _run_stream(self, job: Job) -> None:
        job.batch_size = 1
        kwargs = job.settings.generation_kwargs()
        kwargs["stopping_criteria"] = StoppingCriteriaList([_Cancelled(job.cancelled)])
        stream = self.pipeline.stream(job.row, **kwargs)
        try:
            for piece in stream:
                job.events.put(("text", piece))
        except Exception as err:
            _fail(job, err)
            return
        job.events.put(("done", stream.completion))

    def _count(self, size: int) -> None:
        with self._cond:
            self.stats["requests"] += size
            self.stats["batches"] += 1
            self.stats["batched_requests"] += size if size > 1 else 0
            self.stats["largest_batch"] = max(self.stats["largest_batch"], size)


def _fail(job: Job, err: BaseException) -> None:
    """Route an error to whoever waits on ``job``."""
    if job.stream:
        job.events.put(("error", err))
    elif not job.future.done():
        job.future.set_exception(err)


__all__ = ["BatchWorker", "Completion", "DecodingSettings", "Job", "QueueFullError"]
