"""Rollout through the service (client -> gRPC -> backend -> back) vs the same backend in-process.

    python bench/rollout_overhead.py [--model DIR]

Same prompts, sampling (temperature 1, 4 new tokens, 1 sample, fixed seed), one thread on both sides.
Prints tokens/s for batch sizes 1, 8, 64 and the ratio service / in-process (target >= 0.95 at batch 64: the
median over rounds that alternate the two sides, with the rounds' range), and
where the difference goes: the server's own time in the handler (the ``alignmesh-handler-us`` trailer: request
decode, generate on the worker thread, response encode) against the in-process call, and the rest of the wall
time (client stub, protobuf, loopback HTTP/2, the server's interceptors and event loop).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
import torch  # noqa: E402

from common import median_time, start_service, table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=10, help="calls per side per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds, each in-process then service")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from alignmesh.coordinator.convert import generate_request, rollouts_from_proto
    from alignmesh.protos.rollout.v1 import rollout_pb2_grpc
    from alignmesh.services.models.loading import load_tokenizer
    from alignmesh.services.models.tiny import ensure_default_model
    from alignmesh.services.rollout.backend import SamplingParams
    from alignmesh.services.rollout.hf import HFRolloutBackend

    model = args.model or str(ensure_default_model(Path("~/.cache/alignmesh").expanduser()))
    tok = load_tokenizer(model)
    local = HFRolloutBackend(model)
    proc, address = start_service("rollout", model, threads=1)
    stub = rollout_pb2_grpc.RolloutServiceStub(grpc.insecure_channel(address))
    rows = [["batch", "in-process tok/s", "service tok/s", "service / in-process", "handler - in-process ms",
             "wall - handler ms"]]
    try:
        for batch in (1, 8, 64):
            prompts = [tok(f"{i % 100}+{(7 * i) % 100}=")["input_ids"] for i in range(batch)]
            params = SamplingParams(max_new_tokens=4, n=1, seed=1)
            tokens = float(local.generate(prompts, params).completion_lengths.sum())
            req = generate_request(prompts, 0, 1, 1, 1.0, 1.0, 4, False)
            got = rollouts_from_proto(stub.Generate(req, timeout=60))
            assert float(got.lengths.sum()) == tokens  # same work on both sides
            t_local, t_service, ratios = paired(lambda: local.generate(prompts, params),
                                                lambda: stub.Generate(req, timeout=60), args.rounds, args.repeats)
            handler = statistics.median(handler_time(stub, req) for _ in range(args.repeats))
            rows.append([str(batch), f"{tokens / t_local:,.0f}", f"{tokens / t_service:,.0f}",
                         f"{statistics.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f})",
                         f"{(handler - t_local) * 1e3:.2f}",
                         f"{(t_service - handler) * 1e3:.2f}"])
    finally:
        proc.terminate()
        proc.wait()
    print(table(rows))


def paired(local, service, rounds: int, repeats: int) -> tuple[float, float, list[float]]:
    """Median seconds per call of each side over all rounds, and each round's ratio service / in-process (in
    tokens/s: t_local / t_service). The two sides alternate round by round, so a slow minute on this machine
    weighs on both rather than on whichever ran during it."""
    local_times, service_times, ratios = [], [], []
    for _ in range(rounds):
        t_local, t_service = median_time(local, repeats, warmup=1), median_time(service, repeats, warmup=1)
        local_times.append(t_local)
        service_times.append(t_service)
        ratios.append(t_local / t_service)
    return statistics.median(local_times), statistics.median(service_times), ratios


def handler_time(stub, req) -> float:
    """Seconds the server spent in the handler for one call, from its trailer."""
    from alignmesh.services.common.interceptors import HANDLER_TRAILER

    _, call = stub.Generate.with_call(req, timeout=60)
    return int(dict(call.trailing_metadata())[HANDLER_TRAILER]) / 1e6


if __name__ == "__main__":
    main()
