"""Load on one coordinator: 50 concurrent clients for 60 s (``ALIGNMESH_LOAD_SECONDS`` shortens it locally)
submitting, cancelling, watching, listing (a page of 100, all or by state) and reading jobs. No error of any kind comes back, every submitted job
ends cancelled or succeeded (none lost or left running), and the p50/p99 latency of each RPC is printed (the
figures in docs/reliability.md come from this test run with ``-s``)."""

from __future__ import annotations

import os
import random
import statistics
import threading
import time

import grpc
import pytest

from alignmesh.clients.client import Client
from alignmesh.deploy.local import LocalCluster
from alignmesh.services.common.settings import load_cluster_config

from helpers import cluster_yaml

pytestmark = pytest.mark.integration
CLIENTS = 50
SECONDS = float(os.environ.get("ALIGNMESH_LOAD_SECONDS", "60"))
JOB = ("algorithm: grpo\nsteps: 1\nparams: {prompts_per_step: 2, group_size: 2}\n"
       "eval: {every: 100000, size: 10}\nsampling: {max_new_tokens: 2}\n")


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def test_fifty_clients_for_a_minute(tiny_model_dir, tmp_path):
    cfg = load_cluster_config(cluster_yaml(tmp_path, tiny_model_dir))
    latency: dict[str, list[float]] = {}
    errors: list[str] = []
    submitted: list[str] = []
    lock = threading.Lock()

    def timed(name: str, fn, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        except grpc.RpcError as err:
            with lock:
                errors.append(f"{name}: {err.code().name}: {err.details()}")
        finally:
            with lock:
                latency.setdefault(name, []).append(time.perf_counter() - start)

    def client_loop(address: str, seed: int, until: float) -> None:
        rng = random.Random(seed)
        with Client(address, timeout_s=30, retries=0) as c:
            while time.monotonic() < until:
                roll = rng.random()
                if roll < 0.35:  # a page of 100, as a dashboard asks (ListJobs pages by token)
                    timed("ListJobs", c.page, 100, "", rng.choice(["", "running", "cancelled"]))
                elif roll < 0.55 and submitted:
                    timed("GetJob", c.get, rng.choice(submitted))
                elif roll < 0.8:
                    job = timed("SubmitJob", c.submit, JOB)
                    if job is not None:
                        with lock:
                            submitted.append(job.id)
                        timed("CancelJob", c.cancel, job.id)
                elif submitted:
                    timed("WatchJob", lambda j: list(c.events(j)), rng.choice(submitted))

    with LocalCluster(cfg) as cluster:
        address = cluster.coordinator_address()
        until = time.monotonic() + SECONDS
        threads = [threading.Thread(target=client_loop, args=(address, i, until)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(SECONDS + 120)
        with Client(address, timeout_s=60) as c:
            deadline = time.monotonic() + 120
            while any(j.state not in ("cancelled", "succeeded", "failed") for j in c.list()):
                assert time.monotonic() < deadline, "jobs left queued or running"
                time.sleep(0.5)
            final = {j.id: j.state for j in c.list()}
    print(f"\n{CLIENTS} clients, {SECONDS:.0f} s, {len(submitted)} jobs submitted")
    for name, values in sorted(latency.items()):
        print(f"  {name:<10} {len(values):6d} calls  p50 {percentile(values, 0.5) * 1000:7.1f} ms  "
              f"p99 {percentile(values, 0.99) * 1000:7.1f} ms  mean {statistics.mean(values) * 1000:7.1f} ms")
    assert errors == []
    assert set(submitted) == set(final)  # none lost
    assert set(final.values()) <= {"cancelled", "succeeded"}  # none left running or queued
    assert all(len(latency.get(n, [])) >= 50 for n in ("ListJobs", "SubmitJob", "CancelJob", "WatchJob"))
