"""Rank 1..N-1 of a multi-process trainer: ``python -m alignmesh.services.trainer.rank_worker --kind zero|megatron``.

Started by the trainer service (rank 0, ``parallel_backend``); it waits for rank 0's commands and does its part
of each. It exits on ``stop``, or when rank 0 is gone (its command group connection closes).
"""

from __future__ import annotations

import argparse
import json
import logging

import torch.distributed as dist

from alignmesh.services.common import threads
from alignmesh.services.trainer.parallel_backend import RANK_KINDS, init_group, make_rank

log = logging.getLogger("alignmesh.trainer.rank_worker")


def execute(rank, command: tuple) -> bool:
    """Do this rank's part of one command; False on ``stop``."""
    name, *args = command
    if name == "train":
        dist.gather_object(rank.train(*args), None, dst=0)
    elif name == "gather":
        for _ in rank.gather_buckets(args[0]):
            pass
    elif name == "save":
        rank.save_state(args[0])
        with rank.gathered(rank.names()):
            pass
    elif name == "load":
        rank.load_state(args[0])
    elif name == "reload":
        rank.reload(args[0])
    elif name == "stop":
        return False
    else:
        raise ValueError(f"unknown command {name!r}")
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=sorted(RANK_KINDS), required=True)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--init-method", required=True)
    ap.add_argument("--timeout-s", type=float, default=300.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--settings", required=True, help="the rank's settings as JSON")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s trainer-rank{args.rank} %(levelname)s %(message)s")
    threads.apply(args.threads)
    settings = json.loads(args.settings)
    commands = init_group(args.init_method, args.rank, args.world, settings["device"], args.timeout_s)
    rank = make_rank(args.kind, settings)
    try:
        while True:
            box: list = [None]
            dist.broadcast_object_list(box, src=0, group=commands)
            if not execute(rank, box[0]):
                break
    finally:
        rank.close()
        dist.destroy_process_group()
        rank.forget()


if __name__ == "__main__":
    main()
