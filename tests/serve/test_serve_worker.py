"""BatchWorker with a stand-in pipeline: what is batched together, and failures stay with their request."""

from __future__ import annotations

import pytest

from flamingo.io.inputs import InputError
from flamingo.pipeline import Completion
from flamingo.serve.worker import BatchWorker, DecodingSettings, Job, QueueFullError


class FakePipeline:
    """Echoes each row; a row "bad" fails any batch it is in; records the batches it ran."""

    max_prompt_tokens = 5

    def __init__(self) -> None:
        self.calls: list[list] = []

    def count_prompt_tokens(self, row) -> int:
        return len(row)

    def generate(self, rows, **generation):
        self.calls.append(list(rows))
        if "bad" in rows:
            raise ValueError("this row is bad")
        return [Completion(f"{row}:{generation['max_new_tokens']}", 1, 1, 0) for row in rows]


def _run(jobs, max_batch_size=4):
    pipe = FakePipeline()
    worker = BatchWorker(pipe, max_batch_size=max_batch_size, max_wait_ms=50)
    for job in jobs:
        worker.submit(job)  # all queued before the worker starts: batching is deterministic
    worker.start()
    results = []
    for job in jobs:
        try:
            results.append(job.future.result(timeout=10).text)
        except Exception as err:
            results.append(err)
    worker.stop()
    return pipe, worker, results


def test_compatible_requests_share_batches_up_to_the_limit():
    short, long = DecodingSettings(max_new_tokens=3), DecodingSettings(max_new_tokens=9)
    jobs = [Job(row=f"r{i}", settings=short if i % 3 else long) for i in range(9)]
    pipe, worker, results = _run(jobs)
    assert results == [f"r{i}:{3 if i % 3 else 9}" for i in range(9)]
    assert pipe.calls == [["r0", "r3", "r6"], ["r1", "r2", "r4", "r5"], ["r7", "r8"]]
    assert worker.snapshot() | {"queued": 0} == {
        "requests": 9,
        "batches": 3,
        "batched_requests": 9,
        "largest_batch": 4,
        "queued": 0,
    }


def test_a_failing_request_does_not_fail_its_batch():
    settings = DecodingSettings()
    jobs = [Job(row=r, settings=settings) for r in ["ok1", "bad", "ok2", "far too long"]]
    pipe, _, results = _run(jobs)
    assert results[0] == "ok1:20" and results[2] == "ok2:20"
    assert isinstance(results[1], ValueError)
    assert isinstance(results[3], InputError) and results[3].code == "prompt_too_long"
    assert ["ok1", "bad", "ok2"] in pipe.calls  # tried together first, then one by one


def test_cancelled_requests_are_skipped_and_the_queue_is_bounded():
    gone, here = Job(row="gone", settings=DecodingSettings()), Job(row="here", settings=DecodingSettings())
    gone.cancelled.set()  # its client went away while it waited
    pipe = FakePipeline()
    worker = BatchWorker(pipe, max_queue=2)
    worker.submit(gone)
    worker.submit(here)
    with pytest.raises(QueueFullError):
        worker.submit(Job(row="x", settings=DecodingSettings()))
    worker.start()
    assert here.future.result(timeout=10).text == "here:20"
    worker.stop()
    assert pipe.calls == [["here"]] and not gone.future.done()
