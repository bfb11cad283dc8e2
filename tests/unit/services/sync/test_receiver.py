"""The receiver's commit never waits for a request in flight: it serves the new version from the next request.

A real gloo group of two members (a sender and a receiver, each in its own thread of this process)."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.distributed as dist

from alignmesh.services.sync import buckets as bk
from alignmesh.services.sync.group import GroupSpec, SyncGroup
from alignmesh.services.sync.receiver import WeightReceiver
from alignmesh.services.sync.sender import publish


def _pair(timeout_s: float = 30.0):
    store = dist.TCPStore("127.0.0.1", 0, None, True, dt.timedelta(seconds=timeout_s), wait_for_workers=False)
    gid = uuid.uuid4().hex[:8]
    specs = [GroupSpec(gid, "127.0.0.1", store.port, 2, r, "gloo", timeout_s) for r in (0, 1)]
    with ThreadPoolExecutor(2) as pool:
        sender, receiver = pool.map(SyncGroup, specs)
    return store, sender, receiver


def _push(sender: SyncGroup, rx: WeightReceiver, source: torch.nn.Module, version: int) -> None:
    named = [(n, p.detach()) for n, p in source.named_parameters()]
    with ThreadPoolExecutor(2) as pool:
        sent = pool.submit(publish, sender, named, version, 1 << 20)
        got = pool.submit(rx.receive, sender.spec.group_id, version, bk.specs_of(named), 1 << 20)
        sent.result(timeout=30), got.result(timeout=30)


def test_commit_during_a_request_takes_effect_at_the_next_request_without_waiting():
    torch.manual_seed(0)
    model, trained = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    store, sender, group = _pair()
    rx = WeightReceiver(model)
    rx.join(group)
    _push(sender, rx, trained, 1)
    x = torch.randn(2, 4)
    in_request, release = threading.Event(), threading.Event()
    seen = {}

    def request():
        with rx.serving() as version:
            in_request.set()
            release.wait(10)
            seen["version"], seen["out"] = version, model(x).detach()

    worker = threading.Thread(target=request)
    worker.start()
    assert in_request.wait(10)
    start = time.monotonic()
    assert rx.commit(1) == 1  # returns while the request still holds the model
    assert time.monotonic() - start < 0.5
    assert rx.version == 1 and rx.staged_version == -1
    release.set()
    worker.join(10)
    assert seen["version"] == 0  # the request in flight finished on the weights it started with
    with rx.serving() as version:
        assert version == 1
        assert torch.equal(model(x), trained(x))  # the next request serves the committed weights


def test_an_idle_receiver_swaps_in_at_commit_and_a_second_commit_replaces_a_pending_one():
    torch.manual_seed(1)
    model, v1, v2, v3 = (torch.nn.Linear(4, 3) for _ in range(4))
    store, sender, group = _pair()
    rx = WeightReceiver(model)
    rx.join(group)
    _push(sender, rx, v1, 1)
    rx.commit(1)
    assert torch.equal(model.weight, v1.weight)  # idle: swapped in at once
    with rx.serving():  # a long request; two versions arrive and are committed meanwhile
        _push(sender, rx, v2, 2)
        rx.commit(2)
        _push(sender, rx, v3, 3)
        rx.commit(3)
        assert rx.version == 3 and torch.equal(model.weight, v1.weight)  # still the request's weights
    with rx.serving() as version:
        assert version == 3 and torch.equal(model.weight, v3.weight) and torch.equal(model.bias, v3.bias)
