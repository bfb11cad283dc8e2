"""Handles to the role services, as flows use them: every call has a deadline; replicas are load-balanced and a
replica that is UNAVAILABLE (or times out) has its share retried on the others, with backoff. Calls that change
state (TrainStep, SaveCheckpoint) carry one request id across their retries, so the trainer applies them once."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from alignmesh.coordinator import convert
from alignmesh.coordinator.rpcstats import RpcLedger, handler_seconds
from alignmesh.protos.common.v1 import weights_pb2
from alignmesh.protos.reference.v1 import reference_pb2_grpc
from alignmesh.protos.reward.v1 import reward_pb2_grpc
from alignmesh.protos.rollout.v1 import rollout_pb2_grpc
from alignmesh.protos.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from alignmesh.services.common.errors import Aborted, Unavailable
from alignmesh.services.common.local_socket import TRAILER as LOCAL_TRAILER, LocalSocketClient
from alignmesh.services.common.server import channel_credentials, grpc_options
from alignmesh.services.common.settings import SecurityConfig

log = logging.getLogger("alignmesh.handles")
# A replica that is down, too slow, or stopping (a stopping server cancels the calls it has not started) — only
# ever for idempotent calls (every pool call is: generation by seed, pure scoring, request ids on the trainer).
# Our own cancellations arrive as asyncio.CancelledError, never as a CANCELLED status.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


@dataclass
class Endpoint:
    role: str
    replica: int
    address: str
    channel: grpc.aio.Channel
    stub: object
    metadata: tuple = ()
    healthy: bool = True
    fresh: bool = False  # joined a running job and not yet admitted (rollout: not yet holding the job's weights)
    local: LocalSocketClient | None = None  # the replica's same-host socket, once offered and checked
    local_offer: str = ""  # the last offer tried (a replica that restarts offers a new one)


async def probe(ep: Endpoint, timeout_s: float = 2.0) -> bool:
    """True when the replica's standard health check says SERVING."""
    try:
        resp = await health_pb2_grpc.HealthStub(ep.channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                                  timeout=timeout_s)
    except grpc.aio.AioRpcError:
        return False
    return resp.status == health_pb2.HealthCheckResponse.SERVING


# A replica that comes back is noticed within ~2 s instead of gRPC's default backoff of up to 2 minutes.
RECONNECT = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
             ("grpc.max_reconnect_backoff_ms", 2000)]


def open_channel(address: str, security: SecurityConfig, authority: str | None = None) -> grpc.aio.Channel:
    """``authority``: the name a TLS certificate must carry when ``address`` is an IP resolved from that name
    (``dns:///`` members)."""
    creds, options = channel_credentials(security), grpc_options(security) + RECONNECT
    if creds is not None:
        if authority:
            options = options + [("grpc.ssl_target_name_override", authority)]
        return grpc.aio.secure_channel(address, creds, options=options)
    return grpc.aio.insecure_channel(address, options=options)


def connect(role: str, replica: int, address: str, security: SecurityConfig, stub_cls,
            authority: str | None = None) -> Endpoint:
    token = security.bearer()
    meta = (("authorization", f"Bearer {token}"),) if token else ()
    channel = open_channel(address, security, authority)
    return Endpoint(role, replica, address, channel, stub_cls(channel), meta)


def endpoints(role: str, addresses: list[str], security: SecurityConfig, stub_cls) -> list[Endpoint]:
    return [connect(role, i, addr, security, stub_cls) for i, addr in enumerate(addresses)]


class Pool:
    """Replicas of one role. ``call`` runs one RPC on one replica with failover."""

    def __init__(self, eps: list[Endpoint], timeout_s: float, retries: int = 3, backoff_s: float = 0.2,
                 ledger: RpcLedger | None = None, local_sockets: bool = True):
        if not eps:
            raise ValueError("a pool needs at least one replica")
        self.eps, self.timeout_s, self.retries, self.backoff_s = eps, timeout_s, retries, backoff_s
        self.ledger = ledger if ledger is not None else RpcLedger()
        self.connect: Callable[[int, str], Endpoint] | None = None  # (replica, address) -> Endpoint, for update
        self.retired: list[Endpoint] = []  # removed replicas: their channels close with the pool
        self.turns = None  # colocation.Turns when this role shares its device group: woken before it works
        self._next_replica = len(eps)
        self.local_sockets = local_sockets  # take a replica's offer of a same-host socket (local_socket.py)

    def healthy(self) -> list[Endpoint]:
        up = [e for e in self.eps if e.healthy]
        return up or self.eps

    async def call(self, method: str, request, first: int = 0, timeout_s: float | None = None):
        if self.turns is not None and method not in ("Sleep", "Wake", "GetWeightVersion"):
            await self.turns.use(self.eps[0].role)
        last: grpc.aio.AioRpcError | None = None
        for attempt in range(self.retries + 1):
            eps = self.healthy()
            ep = eps[(first + attempt) % len(eps)]
            try:
                return await self._timed(ep, method, request, timeout_s or self.timeout_s)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE:
                    raise
                last = exc
                ep.healthy = False
                log.warning("%s replica %d (%s) failed %s: %s; retrying elsewhere", ep.role, ep.replica,
                            ep.address, method, exc.code().name)
                await asyncio.sleep(self.backoff_s * (2 ** attempt))
        assert last is not None
        raise last

    async def _timed(self, ep: Endpoint, method: str, request, timeout_s: float):
        """One RPC, recorded in the ledger: payload bytes both ways, wall time and the server's handler time. Over
        the replica's local socket when it offered one for ``method``, else (and when that socket fails) gRPC."""
        start = time.perf_counter()
        if ep.local is not None and method in ep.local.methods:
            try:
                body, handler = await ep.local.call(method, request.SerializeToString(), timeout_s)
            except ConnectionError as exc:
                log.info("%s replica %d: local socket failed (%s); back to gRPC", ep.role, ep.replica, exc)
                local, ep.local = ep.local, None
                await local.close()
            else:
                self.ledger.record(ep.role, request.ByteSize(), len(body), time.perf_counter() - start, handler)
                return convert.LOCAL_REPLIES[method](body)
            start = time.perf_counter()
        call = getattr(ep.stub, method)(request, timeout=timeout_s, metadata=ep.metadata)
        response = await call
        wall = time.perf_counter() - start
        trailers = await call.trailing_metadata()
        self.ledger.record(ep.role, request.ByteSize(), response.ByteSize(), wall, handler_seconds(trailers))
        if self.local_sockets and method in convert.LOCAL_REPLIES:
            await self._take_offer(ep, method, trailers)
        return response

    async def _take_offer(self, ep: Endpoint, method: str, trailers) -> None:
        offer = next((value for key, value in trailers or () if key == LOCAL_TRAILER), "")
        if not offer or offer == ep.local_offer:
            return
        ep.local_offer = offer
        try:
            local = await LocalSocketClient.open(offer, (method,))
        except (ConnectionError, grpc.aio.AioRpcError) as exc:  # another host, or another user: gRPC it is
            log.info("%s replica %d: its local socket is out of reach (%s); staying on gRPC", ep.role,
                     ep.replica, exc)
            return
        old, ep.local = ep.local, local
        if old is not None:
            await old.close()
        log.info("%s replica %d (%s): %s goes over its local socket %s", ep.role, ep.replica, ep.address, method,
                 local.name)

    def update(self, addresses: list[str]) -> tuple[list[str], list[str]]:
        """Make the replicas ``addresses``: (added, removed). A new replica starts marked down, so it gets no
        work before it is admitted (after its health check, and for rollout and reference replicas after it
        holds the current weights); a removed one gets no new work, and calls it is serving finish on their
        own. An empty list leaves the pool as it is (a job never loses its last replica this way)."""
        if not addresses or self.connect is None:
            return [], []
        have = {ep.address for ep in self.eps}
        removed = [ep for ep in self.eps if ep.address not in addresses]
        added = []
        for address in addresses:
            if address not in have:
                ep = self.connect(self._next_replica, address)
                self._next_replica += 1
                ep.healthy, ep.fresh = False, True
                added.append(ep)
        self.eps = [ep for ep in self.eps if ep.address in addresses] + added
        self.retired += removed
        return [ep.address for ep in added], [ep.address for ep in removed]

    async def close(self) -> None:
        await asyncio.gather(*(e.local.close() for e in self.eps + self.retired if e.local is not None))
        await asyncio.gather(*(e.channel.close() for e in self.eps + self.retired))


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    parts = max(1, min(parts, n))
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append((start, start + size))
        start += size
    return out


class RolloutPool(Pool):
    """Prompts are cut into chunks (one per replica when there is one; ``chunks_per_replica`` each when there are
    more) and every healthy replica pulls the next chunk when it is free: a slow or added replica changes the
    throughput, never which samples a step gets (chunk ``k`` always carries seed ``seed * 7919 + k``)."""

    def __init__(self, eps, timeout_s, pad_id: int, ledger: RpcLedger | None = None, chunks_per_replica: int = 4,
                 local_sockets: bool = True):
        super().__init__(eps, timeout_s, ledger=ledger, local_sockets=local_sockets)
        self.pad_id, self.chunks_per_replica = pad_id, chunks_per_replica

    async def generate(self, prompts: list[list[int]], n: int, seed: int, temperature: float = 1.0,
                       top_p: float = 1.0, max_new_tokens: int = 16, greedy: bool = False) -> convert.Rollouts:
        replicas = len(self.healthy())
        chunks = _split(len(prompts), 1 if replicas == 1 else replicas * self.chunks_per_replica)
        todo = list(enumerate(chunks))[::-1]
        parts: list[convert.Rollouts | None] = [None] * len(chunks)

        async def one(k: int, lo: int, hi: int, replica: int) -> convert.Rollouts:
            req = convert.generate_request(prompts[lo:hi], self.pad_id, n, seed * 7919 + k, temperature, top_p,
                                           max_new_tokens, greedy)
            out = convert.rollouts_from_proto(await self.call("Generate", req, first=replica))
            if out.lengths.numel() != (hi - lo) * n or out.completion_ids.shape[0] != (hi - lo) * n:
                raise Aborted(f"rollout: a replica answered {out.lengths.numel()} samples for {hi - lo} prompts x "
                              f"{n}; its reply is dropped (no sample is trained on twice or lost silently)")
            return out

        async def puller(replica: int) -> None:
            while todo:
                k, (lo, hi) = todo.pop()
                parts[k] = await one(k, lo, hi, replica)

        async with asyncio.TaskGroup() as tasks:  # a failure cancels the other pullers
            for r in range(replicas):
                tasks.create_task(puller(r))
        missing = [k for k, p in enumerate(parts) if p is None]
        if missing:
            raise Aborted(f"rollout: chunks {missing} of the step were not generated")
        return convert.concat_rollouts(parts, self.pad_id)


class RewardPool(Pool):
    """Stateless scorers: a replica marked down is re-admitted as soon as its health check passes."""

    async def score(self, items: list[tuple[str, str, dict[str, str]]], reward_fn: str = "") -> torch.Tensor:
        for ep in self.eps:
            if not ep.healthy and await probe(ep, timeout_s=0.5):
                ep.healthy = True
        chunks = _split(len(items), len(self.healthy()))
        parts = await asyncio.gather(*(self.call("Score", convert.score_request(items[lo:hi], reward_fn), first=k)
                                       for k, (lo, hi) in enumerate(chunks)))
        return torch.cat([convert.scores_from_proto(p) for p in parts])


class ReferencePool(Pool):
    """The reference is a fixed model, not the trainer's current weights: ``source`` names the model directory
    (and version) it serves, so that a replica coming back after a failure is loaded with it before it serves
    again. Unknown (None) after a flow pushes the trainer's weights to it: such a replica then stays down."""

    source: tuple[str, int] | None = None

    async def readmit(self) -> None:
        for ep in self.eps:
            if ep.healthy or self.source is None or not await probe(ep, timeout_s=0.5):
                continue
            try:
                await self._timed(ep, "LoadWeights", convert.load_weights_request(*self.source), self.timeout_s)
            except grpc.aio.AioRpcError as exc:
                log.warning("reference replica %d (%s) is back but could not load %s: %s", ep.replica, ep.address,
                            self.source[0], exc.details())
                continue
            ep.healthy = True
            log.info("reference replica %d (%s) is back; re-admitted with %s (version %d)", ep.replica,
                     ep.address, *self.source)

    async def hold_back_strays(self) -> None:
        """A replica that does not serve ``source``'s version (restarted while no coordinator watched it) is
        marked down, so that it loads the reference weights before it serves (``readmit``)."""
        for ep in self.eps:
            try:
                served = (await self._timed(ep, "GetWeightVersion", weights_pb2.GetWeightVersionRequest(), 10)).version
            except grpc.aio.AioRpcError:
                served = -1
            if self.source is None or served != self.source[1]:
                ep.healthy = False

    async def logprobs(self, ids: torch.Tensor, mask: torch.Tensor, prompt_lengths: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """[B, T] reference log-probabilities, rows split over the healthy replicas; ``prompt_lengths`` [B] lets a
        replica compute a prompt that consecutive rows share once."""
        await self.readmit()
        chunks = _split(ids.shape[0], len(self.healthy()))
        parts = await asyncio.gather(*(self.call("ComputeLogProbs", convert.logprobs_request(
            ids[lo:hi], mask[lo:hi], None if prompt_lengths is None else prompt_lengths[lo:hi]), first=k)
            for k, (lo, hi) in enumerate(chunks)))
        return torch.cat([convert.logprobs_from_proto(p) for p in parts])


class TrainerUnavailable(Unavailable):
    """The trainer (or critic) stopped answering: the job waits for it to come back and resumes from its last
    checkpoint (``jobs.JobManager``)."""


class TrainerHandle(Pool):
    async def call(self, method: str, request, first: int = 0, timeout_s: float | None = None):
        try:
            return await super().call(method, request, first, timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRYABLE:
                raise
            raise TrainerUnavailable(f"{self.eps[0].role} at {self.eps[0].address}: {method} failed "
                                     f"{exc.code().name} after {self.retries} retries: {exc.details()}") from exc

    async def train_step(self, ids, mask, loss_mask, advantages=None, ref_logprobs=None, loss: dict | None = None,
                         learning_rate: float | None = None, returns=None, old_values=None,
                         behavior_logprobs=None) -> tuple[int, dict[str, float]]:
        req = convert.train_request(ids, mask, loss_mask, advantages, ref_logprobs, loss or {}, learning_rate,
                                    returns, old_values, behavior_logprobs)
        resp = await self.call("TrainStep", req)
        return resp.step, dict(resp.metrics)

    async def state(self) -> trainer_pb2.TrainerState:
        return await self.call("GetState", trainer_pb2.GetStateRequest())

    async def save_checkpoint(self, path: str, export_hf: bool = False) -> trainer_pb2.CheckpointInfo:
        req = trainer_pb2.SaveCheckpointRequest(path=path, export_hf=export_hf, request_id=uuid.uuid4().hex)
        return await self.call("SaveCheckpoint", req)  # retried with the same id: saved once

    async def values(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Critic: per-token values [B, T] and sequence scores [B]."""
        resp = await self.call("ComputeValues", convert.values_request(ids, mask))
        return convert.values_from_proto(resp)

    async def manifest(self, bucket_bytes: int, dtype: str = "", merged: bool = False) -> weights_pb2.WeightManifest:
        return await self.call("GetWeightManifest", trainer_pb2.GetWeightManifestRequest(
            bucket_bytes=bucket_bytes, dtype=dtype, merged=merged))


STUBS = {"rollout": rollout_pb2_grpc.RolloutServiceStub, "reward": reward_pb2_grpc.RewardServiceStub,
         "reference": reference_pb2_grpc.ReferenceServiceStub}


def make_pools(addresses: dict[str, list[str]], security: SecurityConfig, timeout_s: float, pad_id: int,
               ledger: RpcLedger | None = None, authority: Callable[[str], str | None] = lambda address: None,
               local_sockets: bool = True):
    """Handles to every role; they share ``ledger`` (the RPC payload accounting). The rollout, reward and
    reference pools can change members while a job runs (``Pool.update``); ``authority(address)`` is the TLS
    name of a member known by a DNS name."""
    ledger = ledger if ledger is not None else RpcLedger()

    def connector(role: str) -> Callable[[int, str], Endpoint]:
        return lambda replica, address: connect(role, replica, address, security, STUBS[role], authority(address))

    def elastic(cls, role: str, **kwargs) -> Pool:
        pool = cls([connector(role)(i, a) for i, a in enumerate(addresses[role])], timeout_s, ledger=ledger,
                   local_sockets=local_sockets, **kwargs)
        pool.connect = connector(role)
        return pool

    return (elastic(RolloutPool, "rollout", pad_id=pad_id), elastic(RewardPool, "reward"),
            elastic(ReferencePool, "reference"),
            TrainerHandle(endpoints("trainer", addresses["trainer"], security, trainer_pb2_grpc.TrainerServiceStub),
                          timeout_s, ledger=ledger),
            TrainerHandle(endpoints("critic", addresses["critic"], security, trainer_pb2_grpc.TrainerServiceStub),
                          timeout_s, ledger=ledger) if addresses.get("critic") else None)
