"""Rollout through the service vs the same backend in-process: over gRPC (client -> gRPC -> backend -> back), and
over the replica's same-host Unix socket (``services/common/local_socket.py``, what the coordinator uses for
generate calls to a replica on its own host).

    python bench/rollout_overhead.py [--model DIR]

Same prompts, sampling (temperature 1, 4 new tokens, 1 sample, fixed seed), one thread on both sides.
Prints tokens/s for batch sizes 1, 8, 64 and the ratios service / in-process (target >= 0.95 at batch 64: the
median over rounds that alternate the three sides, with the rounds' range), and
where the difference goes: the server's own time in the handler (the ``alignmesh-handler-us`` trailer: request
decode, generate on the worker thread, response encode) against the in-process call, and the rest of the wall
time (client stub, protobuf, loopback HTTP/2, the server's interceptors and event loop).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
import torch  # noqa: E402

from common import median_time, start_service, table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=20, help="calls per side per round")
    parser.add_argument("--rounds", type=int, default=9, help="rounds, each in-process, gRPC, local socket")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from alignmesh.coordinator.convert import generate_request, rollouts_from_proto
    from alignmesh.protos.rollout.v1 import rollout_pb2_grpc
    from alignmesh.protos.rollout.v1.rollout_pb2 import GenerateResponse
    from alignmesh.services.models.loading import load_tokenizer
    from alignmesh.services.models.tiny import ensure_default_model
    from alignmesh.services.rollout.backend import SamplingParams
    from alignmesh.services.rollout.hf import HFRolloutBackend

    model = args.model or str(ensure_default_model(Path("~/.cache/alignmesh").expanduser()))
    tok = load_tokenizer(model)
    local = HFRolloutBackend(model)
    proc, address = start_service("rollout", model, threads=1)
    stub = rollout_pb2_grpc.RolloutServiceStub(grpc.insecure_channel(address))
    rows = [["batch", "in-process tok/s", "gRPC tok/s", "gRPC / in-process", "local socket / in-process",
             "handler - in-process ms", "gRPC: wall - handler ms", "local socket: wall - handler ms"]]
    loop = asyncio.new_event_loop()
    try:
        for batch in (1, 8, 64):
            prompts = [tok(f"{i % 100}+{(7 * i) % 100}=")["input_ids"] for i in range(batch)]
            params = SamplingParams(max_new_tokens=4, n=1, seed=1)
            tokens = float(local.generate(prompts, params).completion_lengths.sum())
            req = generate_request(prompts, 0, 1, 1, 1.0, 1.0, 4, False)
            got = rollouts_from_proto(stub.Generate(req, timeout=60))
            assert float(got.lengths.sum()) == tokens  # same work on every side
            sock = loop.run_until_complete(open_local(stub, req))
            payload = req.SerializeToString()
            got = rollouts_from_proto(GenerateResponse.FromString(loop.run_until_complete(
                sock.call("Generate", payload, 60))[0]))
            assert float(got.lengths.sum()) == tokens
            sides = {"in-process": lambda: local.generate(prompts, params),
                     "gRPC": lambda: stub.Generate(req, timeout=60),
                     "local socket": lambda: loop.run_until_complete(sock.call("Generate", payload, 60))}
            times, ratios = paired(sides, args.rounds, args.repeats)
            handler = statistics.median(handler_time(stub, req) for _ in range(args.repeats))
            grpc_cost = statistics.median(call_cost(lambda: grpc_call(stub, req)) for _ in range(args.repeats))
            local_cost = statistics.median(call_cost(lambda: loop.run_until_complete(sock.call("Generate", payload, 60)))
                                           for _ in range(args.repeats))
            rows.append([str(batch), f"{tokens / times['in-process']:,.0f}", f"{tokens / times['gRPC']:,.0f}",
                         _spread(ratios["gRPC"]), _spread(ratios["local socket"]),
                         f"{(handler - times['in-process']) * 1e3:.2f}", f"{grpc_cost * 1e3:.2f}",
                         f"{local_cost * 1e3:.2f}"])
            loop.run_until_complete(sock.close())
    finally:
        proc.terminate()
        proc.wait()
        loop.close()
    print(table(rows))


def _spread(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f})"


async def open_local(stub, req):
    """The replica's same-host socket, as the coordinator finds it: named in a trailer of a gRPC reply."""
    from alignmesh.services.common.local_socket import TRAILER, LocalSocketClient

    _, call = stub.Generate.with_call(req, timeout=60)
    offer = dict(call.trailing_metadata()).get(TRAILER)
    assert offer, "the rollout service offers no local socket"
    return await LocalSocketClient.open(offer, ("Generate",))


def paired(sides: dict, rounds: int, repeats: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Median seconds per call of each side over all rounds, and each round's ratio side / in-process (in
    tokens/s: t_in_process / t_side). The sides take turns round by round (``repeats`` calls each, the model kept
    warm as a serving process keeps it), so a slow minute on this machine weighs on all of them rather than on
    whichever ran during it."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            times[name].append(median_time(fn, repeats, warmup=1))
    base = times["in-process"]
    ratios = {name: [b / t for b, t in zip(base, ts)] for name, ts in times.items()}
    return {name: statistics.median(ts) for name, ts in times.items()}, ratios


def call_cost(call) -> float:
    """One call's wall time minus the server's own time in its handler (the transport's cost), in seconds;
    ``call`` returns (anything, handler seconds)."""
    start = time.perf_counter()
    _, handler = call()
    return time.perf_counter() - start - handler


def grpc_call(stub, req):
    from alignmesh.services.common.interceptors import HANDLER_TRAILER

    _, call = stub.Generate.with_call(req, timeout=60)
    return None, int(dict(call.trailing_metadata())[HANDLER_TRAILER]) / 1e6


def handler_time(stub, req) -> float:
    """Seconds the server spent in the handler for one call, from its trailer."""
    from alignmesh.services.common.interceptors import HANDLER_TRAILER

    _, call = stub.Generate.with_call(req, timeout=60)
    return int(dict(call.trailing_metadata())[HANDLER_TRAILER]) / 1e6


if __name__ == "__main__":
    main()
