"""Weight push over the side channel vs a raw torch.distributed broadcast of the same bytes, same group.

    python bench/weight_push.py [--buckets-mb 4 32 64 256] [--receivers 1 2] [--no-tiny]

Rank 0 sends, 1 or 2 receiver processes receive (gloo, loopback, 1 thread each). "alignmesh" is the full
protocol: pack into dtype buckets, checksums, header, broadcast, receiver-side verify + stage + atomic swap into
the live model; the sender's parameters live in flat buckets (``buckets.lay_out``, as the torch trainer keeps them
after its first push), so it sends them without a copy. "raw" broadcasts the same pre-packed buckets and nothing
else. "steady" is the trainer's push between training steps: its weights vouched finite
(``sender.FiniteSinceChecked``: only optimizer steps with finite gradients changed them since a checked push), so
the NaN/Inf pass is skipped; "alignmesh" checks every bucket, as the first push after a load does. Models: the tiny
default
(0.5M params) and a ~50M-param Llama config, several bucket sizes. The three modes alternate push by push; prints
the median time of each and the median over pushes of the ratio raw / ours (each push against the raw one before it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import table  # noqa: E402

MODES = ("raw", "alignmesh", "vouched")


def _group(rank: int, world: int, port: int, tag: str):
    from alignmesh.services.sync.group import GroupSpec, SyncGroup

    return SyncGroup(GroupSpec(tag, "127.0.0.1", port, world, rank, "gloo", 120.0))


def _worker(rank: int, world: int, port: int, model_dir: str, buckets: list[int], repeats: int, out) -> None:
    torch.set_num_threads(1)
    from alignmesh.services.models.loading import load_causal_lm
    from alignmesh.services.sync import buckets as bk
    from alignmesh.services.sync.receiver import WeightReceiver
    from alignmesh.services.sync.sender import named_weights, publish

    model = load_causal_lm(model_dir)
    group = _group(rank, world, port, "bench")
    receiver = WeightReceiver(model)
    receiver.join(group)
    named = named_weights(model)
    specs = bk.specs_of(named)
    flag = torch.zeros(1)
    version = 0
    buffers: dict = {}
    for bucket_bytes in buckets:
        plan = bk.plan(specs, bucket_bytes)
        flats = [bk.pack(b, dict(named)) if rank == 0 else torch.empty(b.numel, dtype=b.dtype) for b in plan]
        if rank == 0:  # as the trainer does at its first push: parameters in persistent flat buckets
            bk.lay_out([(n, p) for n, p in model.named_parameters() if p.requires_grad], plan)
            named = named_weights(model)
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for rep in range(repeats + 1):  # the modes alternate push by push: a slow second weighs on all three
            for mode in MODES:
                group.broadcast(flag)  # line up
                start = time.perf_counter()
                if mode == "raw":
                    for f in flats:
                        group.broadcast(f)
                elif rank == 0:
                    version += 1
                    publish(group, named, version, bucket_bytes, buffers, known_finite=mode == "vouched")
                else:
                    version += 1
                    receiver.receive("bench", version, specs, bucket_bytes)
                    receiver.commit(version)
                group.broadcast(flag)  # everyone done (receivers verified and swapped)
                if rep:
                    times[mode].append(time.perf_counter() - start)
        results = {mode: statistics.median(t) for mode, t in times.items()}
        results["ratios"] = [statistics.median(r / t for r, t in zip(times["raw"], times[mode]))
                             for mode in ("alignmesh", "vouched")]
        if rank == 0:
            out.put((bucket_bytes, sum(s.nbytes for s in specs), len(plan), results))


def run(model_dir: str, receivers: int, buckets: list[int], repeats: int) -> list:
    port = _free_port()
    store = dist.TCPStore("127.0.0.1", port, None, True, dt.timedelta(seconds=120), wait_for_workers=False)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, receivers + 1, port, model_dir, buckets, repeats, out))
             for r in range(receivers + 1)]
    for p in procs:
        p.start()
    rows = [out.get(timeout=600) for _ in buckets]
    for p in procs:
        p.join(60)
    del store
    return rows


def _free_port() -> int:
    from alignmesh.deploy.local import free_port

    return free_port()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--buckets-mb", type=int, nargs="+", default=[4, 32, 64, 256], help="bucket sizes, 50M model")
    ap.add_argument("--receivers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=9, help="pushes per mode and bucket size, after one warm-up")
    ap.add_argument("--no-tiny", dest="tiny", action="store_false", help="only the 50M model")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from alignmesh.services.models.tiny import create_model_dir, ensure_default_model

    tiny = str(ensure_default_model(Path("~/.cache/alignmesh").expanduser()))
    big = Path(tempfile.gettempdir()) / "alignmesh-bench-50m"
    if not (big / "config.json").is_file():
        create_model_dir(big, seed=0, hidden=512, layers=12, heads=8, ffn=2048, positions=64)
    rows = [["model", "receivers", "bucket", "MB", "buckets", "raw ms", "alignmesh ms", "raw / alignmesh",
             "steady ms", "raw / steady"]]
    models = [("tiny 0.5M", tiny, [1 << 20, 64 << 20])] if args.tiny else []
    for name, model, buckets in models + [("llama 50M", str(big), [mb << 20 for mb in args.buckets_mb])]:
        for receivers in args.receivers:
            for bucket_bytes, total, n, t in run(model, receivers, buckets, args.repeats):
                rows.append([name, str(receivers), f"{bucket_bytes >> 20} MB", f"{total / 1e6:.1f}", str(n),
                             f"{t['raw'] * 1e3:.1f}", f"{t['alignmesh'] * 1e3:.1f}", f"{t['ratios'][0]:.2f}",
                             f"{t['vouched'] * 1e3:.1f}", f"{t['ratios'][1]:.2f}"])
    print(table(rows))


if __name__ == "__main__":
    main()
