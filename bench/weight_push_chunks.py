"""Would hashing each piece of a bucket while it is still in cache close the weight push's gap to raw?

    python bench/weight_push_chunks.py [CHUNK_MB ...]        (default: 2 4 8)

Two processes, gloo on loopback, one torch thread each, 200 MB in the push's bucket layout (3 x 64 MB + 8 MB,
fp32), 15 rounds after a warm-up with the modes alternating. "raw": the buckets broadcast and nothing else.
"today": the channel's order (``services/sync``): each bucket broadcast whole, the sender hashing it (xxh3_64)
while it is on the wire, the receiver hashing bucket i while bucket i+1 arrives. "chunked": every bucket sent as
CHUNK_MB pieces, two in flight, the sender hashing each piece just before it goes (so the send copy reads it from
cache), the receiver hashing each piece as soon as it lands (streaming xxh3: the same digests, checked). Prints
each mode's median time and the median over rounds of raw / mode.
"""

from __future__ import annotations

import datetime as dt
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import xxhash


def xxh3(t: torch.Tensor) -> int:
    return xxhash.xxh3_64_intdigest(t.view(torch.uint8).numpy())


def today(pg, flats: list[torch.Tensor], rank: int) -> list[int]:
    """Whole buckets; the sender hashes bucket i while it is on the wire, the receiver while i+1 arrives."""
    sums, pending = [], None
    if rank == 0:
        for flat in flats:
            work = pg.broadcast([flat])
            sums.append(xxh3(flat))
            if pending is not None:
                pending.wait()
            pending = work
        pending.wait()
        return sums
    work = pg.broadcast([flats[0]])
    for i, flat in enumerate(flats):
        work.wait()
        work = pg.broadcast([flats[i + 1]]) if i + 1 < len(flats) else None
        sums.append(xxh3(flat))
    return sums


def pieces_of(flats: list[torch.Tensor], chunk: int) -> list[tuple[int, torch.Tensor]]:
    return [(i, flat.view(torch.uint8)[o:o + chunk]) for i, flat in enumerate(flats)
            for o in range(0, flat.numel() * flat.element_size(), chunk)]


def chunked(pg, flats: list[torch.Tensor], rank: int, chunk: int, ahead: int = 2) -> list[int]:
    """``chunk``-byte pieces, ``ahead`` in flight, each hashed while it is in cache (same digests as ``today``)."""
    pieces = pieces_of(flats, chunk)
    hashers = [xxhash.xxh3_64() for _ in flats]
    works = []
    if rank == 0:
        for i, piece in pieces:
            hashers[i].update(piece.numpy())  # read now: the send copy finds it in cache
            works.append(pg.broadcast([piece]))
            if len(works) > ahead:
                works.pop(0).wait()
        for work in works:
            work.wait()
        return [h.intdigest() for h in hashers]
    works = [pg.broadcast([piece]) for _, piece in pieces[:ahead]]
    for k, (i, piece) in enumerate(pieces):
        works.pop(0).wait()
        if k + ahead < len(pieces):
            works.append(pg.broadcast([pieces[k + ahead][1]]))
        hashers[i].update(piece.numpy())  # just landed: still in cache
    return [h.intdigest() for h in hashers]


MODES = ("raw", "today", "chunked")


def worker(rank: int, port: int, sizes: list[int], chunk: int, rounds: int, out) -> None:
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=dt.timedelta(seconds=60))
    pg = dist.ProcessGroupGloo(store, rank, 2, dt.timedelta(seconds=60))
    gen = torch.Generator().manual_seed(0)
    flats = [torch.randn(n // 4, generator=gen) if rank == 0 else torch.empty(n // 4) for n in sizes]
    flag = torch.zeros(1)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    digests = {}
    for rnd in range(rounds + 1):  # round 0 warms up
        for mode in MODES:
            pg.broadcast([flag]).wait()
            start = time.perf_counter()
            if mode == "raw":
                for flat in flats:
                    pg.broadcast([flat]).wait()
            else:
                digests[mode] = today(pg, flats, rank) if mode == "today" else chunked(pg, flats, rank, chunk)
            pg.broadcast([flag]).wait()
            if rnd:
                times[mode].append(time.perf_counter() - start)
    if digests["today"] != digests["chunked"]:
        raise AssertionError("the chunked hashes differ from the whole-bucket ones")
    if rank == 1:
        out.put({mode: (statistics.median(t) * 1e3, statistics.median(r / x for r, x in zip(times["raw"], t)))
                 for mode, t in times.items()})


def main() -> None:
    from alignmesh.deploy.local import free_port

    sizes = [64 << 20] * 3 + [8 << 20]
    for chunk_mb in [int(x) for x in sys.argv[1:]] or [2, 4, 8]:
        port = free_port()
        store = dist.TCPStore("127.0.0.1", port, None, True, dt.timedelta(seconds=60), wait_for_workers=False)
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        procs = [ctx.Process(target=worker, args=(r, port, sizes, chunk_mb << 20, 15, out)) for r in (0, 1)]
        for p in procs:
            p.start()
        result = out.get(timeout=300)
        for p in procs:
            p.join(60)
        print(f"chunk {chunk_mb} MB: " + ", ".join(f"{mode} {ms:.1f} ms (raw / {mode} {ratio:.2f})"
                                                  for mode, (ms, ratio) in result.items()))
        del store


if __name__ == "__main__":
    main()
