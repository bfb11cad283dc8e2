"""Experience transfer: bytes and milliseconds of RPC payload per GRPO step, as a fraction of step time.

    python bench/experience_transfer.py --steps 40 [--local-sockets both|on|off]

Runs the demo's job (examples/grpo_addition.yaml: SFT warm start, then GRPO with 64 prompts x 8 samples, KL to
the reference) on a local cluster with 2 rollout replicas. Every RPC the coordinator makes is accounted by its
handles: request and response payload bytes, and transfer time = wall time at the coordinator minus the server's
handler time (reported in a trailer), i.e. protobuf encode/decode on both ends plus the hop itself. Medians are
over the steps after the first 5. Calls that run in parallel (the two rollout replicas) are summed, so the share
is an upper bound on what transfer adds to the step's critical path. With ``both`` (the default) the job runs twice,
with the replicas' same-host sockets (``local_sockets: true``, the default) and with gRPC only, one after the other.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import table  # noqa: E402

HERE = Path(__file__).resolve().parent
ROLES = ("rollout", "reward", "reference", "trainer")


def run_job(args, out: Path, local_sockets: bool) -> list[dict]:
    from alignmesh.clients.client import Client
    from alignmesh.deploy.local import LocalCluster
    from alignmesh.services.common.settings import ClusterConfig

    cfg = ClusterConfig(state_dir=str(out / "state"), local_sockets=local_sockets)
    cfg.rollout.replicas = 2
    cfg.coordinator.runs_dir = str(out / "runs")
    job = yaml.safe_load((HERE.parent / "examples" / "grpo_addition.yaml").read_text())
    job["steps"] = args.steps
    job["params"].update(prompts_per_step=args.prompts, group_size=args.group)
    job["sampling"]["max_new_tokens"] = args.max_new_tokens
    job["eval"]["every"] = 10 ** 6
    with LocalCluster(cfg) as cluster, Client(cluster.coordinator_address(), timeout_s=60) as client:
        done = client.wait(client.submit(yaml.safe_dump(job), name="experience-transfer").id)
    rows = [json.loads(x) for x in (Path(done.run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["metrics"] for r in rows if r["kind"] == "step" and r["stage"] == "main"][5:]


def median(steps: list[dict], key: str) -> float:
    return statistics.median(s.get(key, 0.0) for s in steps)


def report(steps: list[dict], args, label: str) -> None:
    step_ms = median(steps, "time_step") * 1000
    rows = [["role", "KiB/step", "transfer ms/step", "share of step"]]
    for role in ROLES:
        ms = median(steps, f"rpc_ms_{role}")
        rows.append([role, f"{median(steps, f'rpc_bytes_{role}') / 1024:.1f}", f"{ms:.1f}", f"{ms / step_ms:.2%}"])
    total_ms = median(steps, "rpc_ms")
    total_kib = median(steps, "rpc_bytes") / 1024
    rows.append(["all", f"{total_kib:.1f}", f"{total_ms:.1f}", f"{total_ms / step_ms:.2%}"])
    print(f"\n{label}: GRPO {args.prompts}x{args.group}, max_new_tokens {args.max_new_tokens}, {len(steps)} steps measured; "
          f"median step {step_ms:.0f} ms, {median(steps, 'rpc_calls'):.0f} RPCs per step")
    print(table(rows))
    print(f"experience transfer / step time: {total_ms / step_ms:.2%} (target <= 5%)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=4)
    ap.add_argument("--out", default="/tmp/alignmesh-bench-transfer")
    ap.add_argument("--local-sockets", choices=["both", "on", "off"], default="both")
    args = ap.parse_args()
    for on in {"both": (True, False), "on": (True,), "off": (False,)}[args.local_sockets]:
        label = "same-host sockets (local_sockets: true)" if on else "gRPC only (local_sockets: false)"
        report(run_job(args, Path(args.out) / ("local" if on else "grpc"), on), args, label)


if __name__ == "__main__":
    main()
