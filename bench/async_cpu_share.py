"""Steady-state step time and each process's CPU share, synchronous vs asynchronous, for a thread split.

    python bench/async_cpu_share.py --init MODEL_DIR --ks 0 1 --replicas 1 --threads 1

MODEL_DIR: an SFT'd model (e.g. runs/<job>/sft/hf of a demo run). Runs the demo's GRPO job from it on one local
cluster, one job per k; after step 15 it samples 8 s of the running job: ms per step, and each process's CPU
time / wall time from /proc/<pid>/stat (the cores together are 100% each).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--init", required=True)
    ap.add_argument("--ks", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="threads per process (0: the cpu_plan's split)")
    ap.add_argument("--cpu-plan", default="phased", choices=["phased", "overlapped"])
    ap.add_argument("--out", default="/tmp/alignmesh-bench-cpu")
    args = ap.parse_args()

    from alignmesh.clients.client import Client
    from alignmesh.deploy.local import LocalCluster
    from alignmesh.services.common.settings import ClusterConfig

    cfg = ClusterConfig(state_dir=f"{args.out}/state", cpu_plan=args.cpu_plan,
                        threads_per_process=args.threads or None)
    cfg.rollout.replicas = args.replicas
    cfg.coordinator.runs_dir = f"{args.out}/runs"
    cfg.security.path_roots = [str(Path(args.init).resolve().parent)]
    with LocalCluster(cfg) as cluster, Client(cluster.coordinator_address()) as client:
        procs = {f"{m.role}{m.replica}": cluster.process(m.role, m.replica).pid for m in cluster.members}
        for k in args.ks:
            job = yaml.safe_load((HERE.parent / "examples" / "grpo_addition.yaml").read_text())
            job.pop("warm_start")
            job.update(init=args.init, steps=60, max_staleness=k)
            job["eval"]["every"] = 1000
            j = client.submit(yaml.safe_dump(job))
            while client.get(j.id).step < 15:
                time.sleep(0.1)
            s0, a, t0 = client.get(j.id).step, {n: cpu_seconds(p) for n, p in procs.items()}, time.time()
            time.sleep(8)
            s1, b, dt = client.get(j.id).step, {n: cpu_seconds(p) for n, p in procs.items()}, time.time() - t0
            shares = " ".join(f"{n} {100 * (b[n] - a[n]) / dt:.0f}%" for n in procs)
            print(f"k={k} replicas={args.replicas} threads={args.threads or args.cpu_plan}: "
                  f"{dt / (s1 - s0) * 1000:.0f} ms/step; cpu {shares}", flush=True)
            client.cancel(j.id)
            client.wait(j.id)


if __name__ == "__main__":
    main()
