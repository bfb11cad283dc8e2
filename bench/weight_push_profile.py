"""Where a weight push spends its time: per process, milliseconds in packing+posting broadcasts, waiting on
them, checksumming, and the trailer, for the ~50M-param model (create it by running bench/weight_push.py once).

    python bench/weight_push_profile.py

Gloo on loopback, 1 torch thread per process, means over 5 pushes after 2 warm-ups; the sender's parameters live in
flat buckets as the torch trainer keeps them. Also prints the checksum's time alone, to compare with the time the
checksums take while a transfer runs.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import table  # noqa: E402

MODEL = Path(tempfile.gettempdir()) / "alignmesh-bench-50m"
PUSHES, WARMUP = 5, 2


def _timed(obj, name: str, label: str, totals: dict) -> None:
    inner = getattr(obj, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            totals[label] += time.perf_counter() - start

    setattr(obj, name, wrapper)


def _untimed(fn, arg, totals: dict) -> None:
    saved = dict(totals)
    fn(arg)
    totals.clear()
    totals.update(saved)


def _worker(rank: int, world: int, port: int, bucket_bytes: int, out) -> None:
    torch.set_num_threads(1)
    from alignmesh.services.models.loading import load_causal_lm
    from alignmesh.services.sync import buckets as bk
    from alignmesh.services.sync import receiver as rcv
    from alignmesh.services.sync import sender as snd
    from alignmesh.services.sync.group import GroupSpec, SyncGroup

    totals: dict[str, float] = defaultdict(float)
    _timed(bk, "checksum", "checksum", totals)
    model = load_causal_lm(str(MODEL))
    group = SyncGroup(GroupSpec("profile", "127.0.0.1", port, world, rank, "gloo", 120.0))
    _timed(group, "wait", "wait", totals)
    receiver = rcv.WeightReceiver(model)
    receiver.join(group)
    named = snd.named_weights(model)
    specs = bk.specs_of(named)
    if rank == 0:  # as the torch trainer keeps them after its first push: parameters in flat buckets, no pack
        bk.lay_out([(n, p) for n, p in model.named_parameters() if p.requires_grad], bk.plan(specs, bucket_bytes))
        named = snd.named_weights(model)
    flag, buffers = torch.zeros(1), {}
    for version in range(1, PUSHES + WARMUP + 1):
        _untimed(group.broadcast, flag, totals)  # line up
        if version == WARMUP + 1:
            totals.clear()
        start = time.perf_counter()
        if rank == 0:
            snd.publish(group, named, version, bucket_bytes, buffers)
        else:
            receiver.receive("profile", version, specs, bucket_bytes)
            receiver.commit(version)
        totals["total"] += time.perf_counter() - start
        _untimed(group.broadcast, flag, totals)  # everyone done before the next push
    out.put((rank, {k: v / PUSHES * 1e3 for k, v in totals.items()}))


def run(receivers: int, bucket_bytes: int) -> list:
    from alignmesh.deploy.local import free_port

    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, None, True, dt.timedelta(seconds=120), wait_for_workers=False)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, receivers + 1, port, bucket_bytes, out))
             for r in range(receivers + 1)]
    for p in procs:
        p.start()
    rows = sorted(out.get(timeout=600) for _ in procs)
    for p in procs:
        p.join(60)
    del store
    return rows


def checksum_ms(nbytes: int) -> float:
    from alignmesh.services.sync.buckets import checksum

    flat = torch.randn(nbytes // 4)
    checksum(flat)
    start = time.perf_counter()
    checksum(flat)
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not (MODEL / "config.json").is_file():
        sys.exit(f"{MODEL} missing: run bench/weight_push.py once first")
    rows = [["receivers", "bucket", "rank", "total ms", "waiting on broadcasts", "checksum",
             "other (pack, trailer, swap)"]]
    for receivers in (1, 2):
        for bucket_bytes in (32 << 20, 256 << 20):
            for rank, t in run(receivers, bucket_bytes):
                other = t["total"] - t["wait"] - t["checksum"]
                who = "sender" if rank == 0 else f"receiver {rank}"
                rows.append([str(receivers), f"{bucket_bytes >> 20} MB", who, f"{t['total']:.1f}", f"{t['wait']:.1f}",
                             f"{t['checksum']:.1f}", f"{other:.1f}"])
    print(table(rows))
    print(f"\nthe checksum (xxh3_64) of 201 MB alone, one thread: {checksum_ms(201_400_000):.1f} ms")


if __name__ == "__main__":
    main()
