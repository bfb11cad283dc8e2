"""Synchronous vs asynchronous GRPO (``max_staleness`` k) through one local cluster: step time, its phases, the
bound ``max(generate + reward + reference, train + push)``, samples/s, version lag and held-out accuracy.

    python bench/async_pipeline.py                       # the demo job, k = 0, 1, 2, seed 0
    python bench/async_pipeline.py --seeds 0 1 2 --steps 300   # the learning table of docs/benchmarks.md
    python bench/async_pipeline.py --betas 0.9 0.99 --set staleness_lr=false   # other optimizer / job settings

Every job runs on the same cluster (2 rollout replicas, trainer, reward, reference, coordinator; 1 thread each)
back to back, so the ratios compare runs measured minutes apart on the same machine. Step time is the median of
the trainer's step-to-step wall time after the first 5 steps; the bound is the median over the same steps of the
larger of the two pipeline stages, from the phase timers of that run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import table  # noqa: E402

from alignmesh.deploy.demo import DEMO_BETAS  # noqa: E402

HERE = Path(__file__).resolve().parent


def job_text(base: dict, k: int, seed: int, steps: int, off_policy: str, warmup: int | None,
             overrides: list[str] = ()) -> str:
    job = json.loads(json.dumps(base))
    job.update(max_staleness=k, seed=seed, steps=steps)
    for item in overrides:  # key=value or params.key=value, the value read as YAML
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = job
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = yaml.safe_load(value)
    if warmup is not None:
        job["staleness_warmup"] = warmup
    job["params"]["off_policy"] = off_policy if k else "none"
    return yaml.safe_dump(job)


def measure(run_dir: Path, prompts: int, group: int) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["metrics"] for r in rows if r["kind"] == "step" and r["stage"] == "main"][5:]
    t = lambda m, *names: sum(m.get(f"time_{n}", 0.0) for n in names)  # noqa: E731
    step = statistics.median(m["time_step"] for m in steps)
    bound = statistics.median(max(t(m, "generate", "reward", "reference"), t(m, "train", "sync")) for m in steps)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"step": step, "bound": bound, "collect": statistics.median(t(m, "generate", "reward", "reference")
                                                                       for m in steps),
            "train": statistics.median(t(m, "train", "sync") for m in steps),
            "wait": statistics.median(t(m, "wait") for m in steps), "samples_per_s": prompts * group / step,
            "lag": statistics.mean(m["version_lag"] for m in steps),
            "lag_max": max(m["version_lag_max"] for m in steps),
            "before": summary["accuracy_before"], "after": summary["accuracy_after"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", default=str(HERE.parent / "examples" / "grpo_addition.yaml"))
    ap.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--off-policy", default="tis", choices=["none", "tis", "decoupled", "sequence_tis"])
    ap.add_argument("--warmup", type=int, default=None, help="staleness_warmup (default: the job's)")
    ap.add_argument("--no-shared-prefix", dest="shared_prefix", action="store_false",
                    help="trainer computes every row whole (a slower trainer: samples run further behind)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                    help="a job field for the k > 0 jobs (repeatable), e.g. staleness_lr=false or params.is_cap=5")
    ap.add_argument("--betas", type=float, nargs=2, default=list(DEMO_BETAS),
                    help="the trainer's AdamW betas (all jobs; default: the demo's)")
    ap.add_argument("--out", default="/tmp/alignmesh-bench-async")
    args = ap.parse_args()

    from alignmesh.clients.client import Client
    from alignmesh.deploy.local import LocalCluster
    from alignmesh.services.common.settings import ClusterConfig

    base = yaml.safe_load(Path(args.job).read_text())
    prompts, group = base["params"]["prompts_per_step"], base["params"]["group_size"]
    cfg = ClusterConfig(state_dir=str(Path(args.out) / "state"))
    cfg.rollout.replicas = 2
    cfg.trainer.shared_prefix = args.shared_prefix
    cfg.trainer.betas = list(args.betas)
    cfg.coordinator.runs_dir = str(Path(args.out) / "runs")
    results: dict[tuple[int, int], dict] = {}
    start = time.time()
    with LocalCluster(cfg) as cluster, Client(cluster.coordinator_address(), timeout_s=60) as client:
        for seed in args.seeds:
            for k in args.ks:
                done = client.wait(client.submit(job_text(base, k, seed, args.steps, args.off_policy, args.warmup,
                                                          args.overrides if k else []),
                                                 name=f"k{k}-s{seed}").id, timeout_s=3600)
                assert done.state == "succeeded", done.error
                results[k, seed] = r = measure(Path(done.run_dir), prompts, group)
                print(f"k={k} seed={seed}: step {r['step'] * 1000:.0f} ms, accuracy {r['before']:.3f} -> "
                      f"{r['after']:.3f}", flush=True)
    rows = [["k", "seed", "step ms", "collect ms", "train+push ms", "wait ms", "step / bound", "samples/s",
             "vs k=0", "lag mean/max", "accuracy before", "after", "gain"]]
    for (k, seed), r in sorted(results.items()):
        sync = results.get((0, seed))
        rows.append([k, seed, f"{r['step'] * 1000:.0f}", f"{r['collect'] * 1000:.0f}", f"{r['train'] * 1000:.0f}",
                     f"{r['wait'] * 1000:.0f}", f"{r['step'] / r['bound']:.2f}", f"{r['samples_per_s']:.0f}",
                     f"{r['samples_per_s'] / sync['samples_per_s']:.2f}x" if sync else "-",
                     f"{r['lag']:.2f}/{r['lag_max']:.0f}", f"{r['before']:.3f}", f"{r['after']:.3f}",
                     f"{(r['after'] - r['before']) * 100:+.1f}"])
    print(table(rows))
    for k in args.ks:
        gains = [(results[k, s]["after"] - results[k, s]["before"]) * 100 for s in args.seeds]
        afters = [results[k, s]["after"] for s in args.seeds]
        print(f"k={k}: mean held-out accuracy after {statistics.mean(afters):.3f}, mean gain "
              f"{statistics.mean(gains):+.1f} points over seeds {args.seeds}")
    print(f"bench wall {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
