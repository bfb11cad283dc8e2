"""The calculator agent task (``examples/grpo_calculator.yaml``) over several seeds through one local cluster:
held-out accuracy and tool use before and after GRPO, turns per episode, step time.

    python bench/calculator_agent.py --seeds 0 1 2        # the table of docs/benchmarks.md
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

HERE = Path(__file__).resolve().parent


def measure(run_dir: Path) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r["metrics"] for r in rows if r["kind"] == "eval" and r["stage"] == "main"]
    steps = [r["metrics"] for r in rows if r["kind"] == "step" and r["stage"] == "main"]
    return {"before": evals[0]["accuracy"], "after": evals[-1]["accuracy"], "tool_before": evals[0]["tool_used"],
            "tool_after": evals[-1]["tool_used"], "turns": statistics.mean(m["episode_turns"] for m in steps),
            "step_ms": statistics.median(m["time_step"] for m in steps) * 1000,
            "wall": json.loads((run_dir / "summary.json").read_text())["wall_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", default=str(HERE.parent / "examples" / "grpo_calculator.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="/tmp/alignmesh-bench-calculator")
    args = ap.parse_args()

    from alignmesh.clients.client import Client
    from alignmesh.deploy.local import LocalCluster
    from alignmesh.services.common.settings import ClusterConfig

    base = yaml.safe_load(Path(args.job).read_text())
    cfg = ClusterConfig(state_dir=str(Path(args.out) / "state"))
    cfg.environment.replicas = 1
    cfg.coordinator.runs_dir = str(Path(args.out) / "runs")
    results = {}
    start = time.time()
    with LocalCluster(cfg) as cluster, Client(cluster.coordinator_address(), timeout_s=60) as client:
        for seed in args.seeds:
            job = dict(base, seed=seed)
            job["dataset"] = dict(base["dataset"], seed=seed)
            done = client.wait(client.submit(yaml.safe_dump(job), name=f"calc-s{seed}").id, timeout_s=3600)
            assert done.state == "succeeded", done.error
            results[seed] = r = measure(Path(done.run_dir))
            print(f"seed {seed}: accuracy {r['before']:.3f} -> {r['after']:.3f}, tool use {r['tool_before']:.3f} -> "
                  f"{r['tool_after']:.3f}", flush=True)
    rows = [["seed", "accuracy before", "after", "gain", "tool use before", "after", "turns/episode", "step ms",
             "job s"]]
    for seed, r in sorted(results.items()):
        rows.append([seed, f"{r['before']:.3f}", f"{r['after']:.3f}", f"{(r['after'] - r['before']) * 100:+.1f}",
                     f"{r['tool_before']:.3f}", f"{r['tool_after']:.3f}", f"{r['turns']:.2f}", f"{r['step_ms']:.0f}",
                     f"{r['wall']:.0f}"])
    print(table(rows))
    gains = [(r["after"] - r["before"]) * 100 for r in results.values()]
    print(f"mean gain {statistics.mean(gains):+.1f} points over seeds {args.seeds}; bench wall {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
