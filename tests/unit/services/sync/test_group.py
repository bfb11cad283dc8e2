"""The host-side deadline of the NCCL wait (the gloo path is exercised end to end by the weight-sync tests)."""

from __future__ import annotations

import time

from alignmesh.services.sync.group import choose_backend, poll


class Work:
    """A collective handle that completes after ``after_s`` (None: never), like a stuck NCCL kernel."""

    def __init__(self, after_s: float | None):
        self.done_at = None if after_s is None else time.monotonic() + after_s

    def is_completed(self) -> bool:
        return self.done_at is not None and time.monotonic() >= self.done_at


def test_poll_returns_when_the_collective_completes():
    start = time.monotonic()
    assert poll(Work(0.05), timeout_s=5)
    assert time.monotonic() - start < 1


def test_poll_gives_up_at_the_deadline_instead_of_hanging():
    start = time.monotonic()
    assert not poll(Work(None), timeout_s=0.2)
    assert 0.2 <= time.monotonic() - start < 1


def test_backend_follows_the_device():
    assert choose_backend("auto", "cpu") == "gloo"
    assert choose_backend("auto", "cuda:1") == "nccl"
    assert choose_backend("gloo", "cuda:0") == "gloo"
