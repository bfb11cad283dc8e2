"""A training step slower than the coordinator's deadline is applied once, not once per retry: the handle keeps
one request id across its retries and a real trainer server (loopback, torch backend) runs each id once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import torch

from alignmesh.coordinator import convert
from alignmesh.coordinator.handles import TrainerHandle, endpoints
from alignmesh.protos.trainer.v1 import trainer_pb2_grpc
from alignmesh.services.common.paths import PathPolicy
from alignmesh.services.common.registry import load_plugins
from alignmesh.services.common.server import ServeSpec, build_server
from alignmesh.services.common.settings import SecurityConfig
from alignmesh.services.trainer.servicer import TrainerServicer, add_to_server
from alignmesh.services.trainer.torch_backend import TorchTrainerBackend

SLOW = Path(__file__).parents[1] / "services" / "trainer" / "slow_loss.py"


def test_a_step_retried_past_its_deadline_is_applied_once(tiny_model_dir, tmp_path):
    load_plugins([str(SLOW)], "trainer.plugins")
    backend = TorchTrainerBackend(str(tiny_model_dir), seed=0)
    ids = torch.randint(3, 20, (4, 8))
    mask, loss_mask = torch.ones(4, 8, dtype=torch.int64), torch.ones(4, 8)

    async def main():
        server = build_server(ServeSpec("trainer", "127.0.0.1", 0, 0, SecurityConfig()))
        add_to_server(TrainerServicer(backend, 20, PathPolicy([tmp_path])), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        # deadline 0.4 s against a 1.2 s step: the first attempts time out and are retried (backoff 0.1, 0.2, 0.4)
        handle = TrainerHandle(endpoints("trainer", [f"127.0.0.1:{port}"], SecurityConfig(),
                                         trainer_pb2_grpc.TrainerServiceStub), timeout_s=0.4, retries=5,
                               backoff_s=0.1)
        try:
            step, stats = await handle.train_step(ids, mask, loss_mask, loss={"name": "slow_sft"})
            again, _ = await handle.train_step(ids, mask, loss_mask, loss={"name": "slow_sft"})
            first = await handle.save_checkpoint(str(tmp_path / "ckpt"))
            req = convert.train_request(ids, mask, loss_mask, None, None, {"name": "sft"}, None)
            req.request_id = "x" * 129  # ids are remembered: their length is bounded
            try:
                await handle.eps[0].stub.TrainStep(req, timeout=10)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "request_id" in exc.details()
            else:
                raise AssertionError("a 129-character request id was accepted")
        finally:
            await handle.close()
            await server.stop(0)
        return step, again, stats, first

    step, again, stats, saved = asyncio.run(main())
    assert step == 1 and "nll" in stats  # the retries got the first run's reply
    assert again == 2  # a new logical step is a new id: it runs
    assert backend.step == 2 and saved.step == 2
