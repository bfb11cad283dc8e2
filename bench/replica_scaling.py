"""Throughput per rollout replica count, changed while one job runs (`alignmesh scale`, reconciled by the local
launcher's supervision), with the ratio to 1 replica measured in the same run.

    python bench/replica_scaling.py                          # 1 -> 2 -> 3 -> 1 rollout replicas, GRPO 32 x 8
    python bench/replica_scaling.py --max-staleness 0 --counts 1 2

After each change the bench waits until every step reports the new replica count, skips 3 steps, then takes the
median step time over ``--window`` steps. Samples/s = samples per step / median step time. Every process pins
its threads (1 each: on a machine with few cores the replicas share them, which is what this measures there).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402

from common import table  # noqa: E402

HERE = Path(__file__).resolve().parent


def job_yaml(prompts: int, group: int, k: int) -> str:
    """The demo's job (SFT warm start, then GRPO with KL), long enough to be measured and then cancelled."""
    job = yaml.safe_load((HERE.parent / "examples" / "grpo_addition.yaml").read_text())
    job.update(steps=100000, max_staleness=k, eval={"every": 100000, "size": 50})
    job["params"].update(prompts_per_step=prompts, group_size=group, off_policy="tis" if k else "none")
    return yaml.safe_dump(job)


def steps_of(client, job_id: str) -> list[dict]:
    return [e.metrics for e in client.events(job_id) if e.kind == "step" and e.stage == "main"]


def window(client, job_id: str, replicas: int, size: int, timeout_s: float = 600) -> list[float]:
    """Step times of ``size`` steps that all ran on ``replicas`` rollout replicas (after 3 settling steps)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = steps_of(client, job_id)
        tail = []
        for m in reversed(rows):
            if m["rollout_replicas"] != replicas:
                break
            tail.append(m["time_step"])
        if len(tail) >= size + 3:
            return tail[:size]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {size + 3} steps on {replicas} replicas in {timeout_s:.0f}s")
        time.sleep(0.5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 2, 3, 1])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--window", type=int, default=15)
    ap.add_argument("--max-staleness", type=int, default=1)
    args = ap.parse_args()

    from alignmesh.clients.client import Client
    from alignmesh.deploy.local import LocalCluster
    from alignmesh.deploy.supervise import Supervisor
    from alignmesh.services.common.settings import ClusterConfig

    cfg = ClusterConfig(threads_per_process=1, state_dir="/tmp/alignmesh-bench-scaling",
                        cpu_plan="overlapped" if args.max_staleness else "phased")
    cfg.rollout.replicas = args.counts[0]
    with LocalCluster(cfg) as cluster, Client(cluster.coordinator_address()) as client:
        supervisor = Supervisor(cluster, say=lambda line: print("  launcher:", line, flush=True))
        thread = threading.Thread(target=supervisor.run, kwargs={"poll_s": 0.2}, daemon=True)
        thread.start()
        job = client.submit(job_yaml(args.prompts, args.group, args.max_staleness), name="scaling")
        rows = []
        for n in args.counts:
            client.scale("rollout", n)
            times = window(client, job.id, n, args.window)
            step = statistics.median(times)
            rows.append((n, step))
            print(f"{n} rollout replicas: median step {step * 1000:.0f} ms", flush=True)
        client.cancel(job.id)
        supervisor.stopped.set()
        thread.join(10)
    base = rows[0][1]
    samples = args.prompts * args.group
    print(table([["rollout replicas", "ms per step", "samples/s", f"vs {rows[0][0]} replica(s)"]] +
                [[n, f"{s * 1000:.0f}", f"{samples / s:.0f}", f"{base / s:.2f}"] for n, s in rows]))


if __name__ == "__main__":
    main()
