"""ForkedIterator: items made in a forked child arrive unchanged, large tensors through memory files that are
neither copied through the pipe nor left open, and errors and early closes behave."""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import Iterator

import pytest
import torch

from flamingo import forked
from flamingo.forked import ForkedIterator

pytestmark = pytest.mark.skipif(not ForkedIterator.available(), reason="needs fork")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def items() -> Iterator[dict]:
    generator = torch.Generator().manual_seed(1)
    for step in range(6):
        big = torch.randn(3, 64, 96, generator=generator)  # 72 KiB: over the inline limit
        yield {
            "step": step,
            "big": big,
            "view": big[:, ::2, 1:],  # not contiguous: sent as its own contiguous copy
            "row": big[1],  # a view at an offset into its storage: only its own bytes travel
            "bf16": torch.randn(256, 256, generator=generator).to(torch.bfloat16),
            "mask": torch.rand(300, 300, generator=generator) > 0.5,
            "ids": torch.arange(70_000, dtype=torch.long).view(700, 100),
            "small": torch.tensor([step, step + 1]),
            "empty": torch.empty(0, 3),
        }


def test_tensors_arrive_equal_with_their_dtypes_shapes_and_values() -> None:
    expected = list(items())
    before = open_fds()
    iterator = ForkedIterator(items, depth=2, name="test worker")
    try:
        got = list(iterator)
    finally:
        iterator.close()
    assert len(got) == len(expected)
    for sent, received in zip(expected, got):
        assert received.keys() == sent.keys()
        assert received["step"] == sent["step"]
        for key, value in sent.items():
            if isinstance(value, torch.Tensor):
                assert received[key].dtype == value.dtype and received[key].shape == value.shape, key
                assert torch.equal(received[key], value), key
        received["big"].add_(1)  # a mapped tensor is writable memory of this process
        assert torch.equal(received["big"], sent["big"] + 1)
    del got, received, iterator
    gc.collect()
    assert open_fds() <= before  # every descriptor received was closed after mapping


@pytest.mark.skipif(not forked._fd_transport(), reason="no memory files here")
def test_large_tensors_skip_the_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The queue carries a pickle of a few hundred bytes for 10 MB of pixels; the pixels come as one descriptor."""
    sizes: list[tuple[int, int]] = []
    load = ForkedIterator._load

    def spy(self: ForkedIterator, count: int, payload: bytes):
        sizes.append((count, len(payload)))
        return load(self, count, payload)

    monkeypatch.setattr(ForkedIterator, "_load", spy)
    iterator = ForkedIterator(lambda: iter([torch.ones(10, 3, 224, 224) * 2]), depth=1, name="test worker")
    try:
        (pixels,) = list(iterator)
    finally:
        iterator.close()
    assert torch.equal(pixels, torch.full((10, 3, 224, 224), 2.0))
    assert sizes[0][0] == 1 and sizes[0][1] < 1000, sizes


def test_without_memory_files_everything_travels_in_the_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forked, "_fd_transport", lambda: False)
    iterator = ForkedIterator(items, depth=2, name="test worker")
    try:
        assert iterator.fd_socket is None
        got = list(iterator)
    finally:
        iterator.close()
    for sent, received in zip(items(), got):
        assert all(torch.equal(received[k], v) for k, v in sent.items() if isinstance(v, torch.Tensor))


@pytest.mark.skipif(not forked._fd_transport(), reason="no memory files here")
@pytest.mark.parametrize("failing", ["memfd_create", "send_fds"])
def test_out_of_descriptors_an_item_travels_in_the_pickle(
    monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """A child that cannot make a memory file (EMFILE) or send one (ETOOMANYREFS: too many in flight for the
    user's open-file limit) sends that item in the pickle instead."""
    import errno

    def refuse(*args, **kwargs):
        raise OSError(errno.EMFILE if failing == "memfd_create" else errno.ETOOMANYREFS, "refused")

    counts: list[int] = []
    load = ForkedIterator._load
    monkeypatch.setattr(ForkedIterator, "_load", lambda self, n, p: counts.append(n) or load(self, n, p))
    monkeypatch.setattr(os if failing == "memfd_create" else socket, failing, refuse)
    iterator = ForkedIterator(items, depth=2, name="test worker")
    try:
        got = list(iterator)
    finally:
        iterator.close()
    for sent, received in zip(items(), got, strict=True):
        assert all(torch.equal(received[k], v) for k, v in sent.items() if isinstance(v, torch.Tensor))
    assert counts and set(counts) == {0}  # no memory file came


def test_closing_early_frees_what_is_in_flight() -> None:
    """Items the child made ahead hold their memory files only in the socket: closing stops the child and
    closes this end, the last holder once the child is gone, and leaves no descriptor open here."""
    before = open_fds()

    def endless() -> Iterator[torch.Tensor]:
        while True:
            yield torch.zeros(512, 512)

    iterator = ForkedIterator(endless, depth=3, name="test worker")
    first = next(iterator)
    iterator.close()
    assert not iterator.process.is_alive()
    assert iterator.fd_socket is None or iterator.fd_socket.fileno() == -1  # closed
    assert torch.equal(first, torch.zeros(512, 512))
    del first, iterator
    gc.collect()
    assert open_fds() <= before


def test_an_error_in_the_child_is_raised_with_its_traceback() -> None:
    def failing() -> Iterator[torch.Tensor]:
        yield torch.ones(300, 300)
        raise KeyError("missing member")

    iterator = ForkedIterator(failing, depth=2, name="test worker")
    try:
        assert torch.equal(next(iterator), torch.ones(300, 300))
        with pytest.raises(KeyError, match="missing member") as error:
            next(iterator)
        assert any("in the test worker process" in note for note in error.value.__notes__)
        with pytest.raises(StopIteration):
            next(iterator)
    finally:
        iterator.close()


def test_a_forged_tensor_reference_is_refused() -> None:
    import io
    import pickle

    class Forger(pickle.Pickler):
        def persistent_id(self, obj):
            return ("memfd", 5, torch.float32, (2,), 8) if isinstance(obj, torch.Tensor) else None

    buffer = io.BytesIO()
    Forger(buffer).dump(torch.zeros(2))
    with pytest.raises(pickle.UnpicklingError, match="unknown tensor reference"):
        forked._TensorUnpickler(io.BytesIO(buffer.getvalue()), []).load()
    assert socket.SOCK_SEQPACKET  # the transport's socket kind exists here
