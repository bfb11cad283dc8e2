"""Shared helpers for the benchmarks: a service process on loopback, timing, tables."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from alignmesh.deploy.local import free_port, health_ok


def start_service(role: str, model_dir: str, threads: int = 1, **cluster) -> tuple[subprocess.Popen, str]:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{role}-"))
    cfg = {"model": model_dir, "threads_per_process": threads, "state_dir": str(tmp), **cluster}
    (tmp / "cluster.yaml").write_text(yaml.safe_dump(cfg))
    port, mport = free_port(), free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "alignmesh.deploy.cli", "serve", role, "--config",
                             str(tmp / "cluster.yaml"), "--port", str(port), "--metrics-port", str(mport)],
                            stdout=open(tmp / "log", "w"), stderr=subprocess.STDOUT, env=env)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while not health_ok(address):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{role} did not start: {(tmp / 'log').read_text()[-1000:]}")
        time.sleep(0.2)
    return proc, address


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def table(rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(r, widths)) for r in rows)
