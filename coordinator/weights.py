"""Weight sync orchestration: form the side-channel group by rendezvous over gRPC, then per version
prepare (receivers stage + verify) / publish (trainer broadcasts) / commit, or abort everywhere."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass

import grpc
import torch.distributed as dist

from alignmesh.coordinator import convert
from alignmesh.coordinator.handles import Endpoint, Pool, TrainerHandle, TrainerUnavailable, probe
from alignmesh.protos.common.v1 import weights_pb2
from alignmesh.protos.trainer.v1 import trainer_pb2
from alignmesh.services.common.errors import Aborted, Unavailable
from alignmesh.services.sync.group import GroupSpec

log = logging.getLogger("alignmesh.weights")


@dataclass
class SyncResult:
    version: int
    bytes: int
    buckets: int
    seconds: float
    receivers: int


class CommitFailed(Aborted):
    """A receiver failed to commit a version the others may already serve."""

    def __init__(self, message: str, result: SyncResult):
        super().__init__(message)
        self.result = result


def listening_store(host: str, timeout_s: float) -> dist.TCPStore:
    """The rendezvous store of the sync groups, listening on ``host`` only (torch's own server listens on every
    interface): the socket is bound here and handed to the store.

    The store takes ownership of the descriptor it is given and closes it when it goes, so it gets a duplicate
    and the socket bound here is closed at once: two owners of one descriptor number would close it twice, and
    the second close would hit whatever the process opened under that number in between."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(addr)
        listener.listen(512)
        port, owned_by_store = listener.getsockname()[1], os.dup(listener.fileno())
    # If the store fails to start, the duplicate is left open: whether torch closed it is not known, and a
    # descriptor leaked on an error path is safer than one closed twice.
    return dist.TCPStore(host, port, None, True, dt.timedelta(seconds=timeout_s), wait_for_workers=False,
                         master_listen_fd=owned_by_store)


class WeightSync:
    """One sync group per named target set (e.g. "rollout", "reference"), each trainer rank 0 + receivers."""

    def __init__(self, trainer: TrainerHandle, store_host: str, bucket_bytes: int, timeout_s: float,
                 backend: str = "auto", dtypes: dict[str, str] | None = None, merged: set[str] | None = None):
        """``dtypes``: the dtype each target set serves ("rollout" -> "bfloat16"); weights go cast to it.
        ``merged``: target sets that hold the plain model while the trainer trains LoRA adapters (vLLM): they get
        the adapters merged into the base weights, the others the adapters alone."""
        self.trainer, self.store_host = trainer, store_host
        self.dtypes = dict(dtypes or {})
        self.merged = set(merged or ())
        self.bucket_bytes, self.timeout_s, self.backend = bucket_bytes, timeout_s, backend
        self._store = listening_store(store_host, timeout_s)
        self._groups: dict[str, tuple[str, tuple[str, ...]]] = {}  # name -> (group id, member addresses)
        self._manifests: dict[tuple[str, bool], weights_pb2.WeightManifest] = {}  # by (dtype, merged)

    async def _rpc(self, ep: Endpoint, method: str, request, timeout: float):
        return await getattr(ep.stub, method)(request, timeout=timeout, metadata=ep.metadata)

    async def form(self, name: str, receivers: list[Endpoint]) -> str:
        group_id = f"{name}-{uuid.uuid4().hex[:8]}"
        world = len(receivers) + 1
        deadline = self.timeout_s + 10

        def spec(rank: int) -> GroupSpec:
            return GroupSpec(group_id, self.store_host, self._store.port, world, rank, self.backend, self.timeout_s)

        trainer_ep = self.trainer.eps[0]
        calls = [self._rpc(trainer_ep, "JoinSyncGroup", convert.join_request(spec(0)), deadline)]
        calls += [self._rpc(ep, "JoinSyncGroup", convert.join_request(spec(i + 1)), deadline)
                  for i, ep in enumerate(receivers)]
        await _all_or_raise(calls, f"forming sync group {group_id}")
        self._groups[name] = (group_id, tuple(ep.address for ep in receivers))
        log.info("sync group %s formed: trainer + %d receivers", group_id, len(receivers))
        return group_id

    async def push(self, name: str, pool: Pool, version: int) -> SyncResult:
        """Send the trainer's weights as ``version`` to the pool's healthy replicas; every live one commits it.

        A replica marked down whose health check passes again is re-admitted: the group is formed anew with it.
        When a push fails, replicas that no longer answer health checks are marked down and the push is retried
        once with the others (with all of them, in a new group, when every one still answers).
        """
        back = [ep for ep in pool.eps if not ep.healthy and await probe(ep)]
        for ep in back:
            log.info("%s replica %d (%s) is back; re-admitting it", ep.role, ep.replica, ep.address)
        members = [ep for ep in pool.eps if ep.healthy or ep in back]
        if not members:
            raise Unavailable(f"no healthy {name} replica to receive weights")
        try:
            result = await self._push_to(name, members, version)
            readmit = members
        except Aborted as err:
            if not await probe(self.trainer.eps[0]):
                raise TrainerUnavailable(f"the trainer at {self.trainer.eps[0].address} stopped answering during "
                                         f"the push of version {version}: {err}") from err
            alive = [ep for ep in members if await probe(ep)]
            if not alive:
                raise
            for ep in members:
                if ep not in alive:
                    ep.healthy = False
            # With every receiver still answering, the failure was the channel's (a peer that restarted between
            # joining and the broadcast): the group is formed anew and the push tried once more.
            log.warning("push of version %d to %s failed (%s); down: %s; trying again in a new group", version,
                        name, err, [ep.address for ep in members if ep not in alive])
            # A replica lost during the commit leaves the others already serving ``version``: only those still
            # behind receive it again (a replica refuses a version it already serves).
            behind = [ep for ep in alive if await self._served_version(ep) < version]
            if not behind and isinstance(err, CommitFailed):
                result = dataclasses.replace(err.result, receivers=len(alive))
            else:
                result = await self._push_to(name, behind or alive, version)
            readmit = alive
        for ep in readmit:  # only now: a replica serves requests again once it holds the current version
            ep.healthy, ep.fresh = True, False
        return result

    async def admit(self, name: str, pool: Pool, version: int) -> int:
        """Bring replicas that joined a running job (``Endpoint.fresh``) to the trainer's current weights, as
        ``version``, in a group of their own, and admit them; the pool's group re-forms with them at the next push.
        Call between steps, when the trainer holds exactly ``version``. Returns how many were admitted."""
        ready = [ep for ep in pool.eps if ep.fresh and await probe(ep, timeout_s=0.5)]
        if not ready:
            return 0
        try:
            await self._push_to(f"{name}-join", ready, version)
        except Aborted as err:  # they stay fresh and are tried again at the next step
            log.warning("%s replicas %s could not receive version %d yet: %s", name,
                        [ep.address for ep in ready], version, err)
            return 0
        for ep in ready:
            ep.fresh, ep.healthy = False, True
        return len(ready)

    async def _served_version(self, ep: Endpoint) -> int:
        try:
            return (await self._rpc(ep, "GetWeightVersion", weights_pb2.GetWeightVersionRequest(), 10)).version
        except grpc.aio.AioRpcError:
            return -1

    async def _push_to(self, name: str, receivers: list[Endpoint], version: int) -> SyncResult:
        key = tuple(ep.address for ep in receivers)
        if self._groups.get(name, ("", ()))[1] != key:
            await self.form(name, receivers)
        group_id = self._groups[name][0]
        dtype = self.dtypes.get(name.removesuffix("-join"), "")
        merged = name.removesuffix("-join") in self.merged
        if (dtype, merged) not in self._manifests:
            self._manifests[dtype, merged] = await self.trainer.manifest(self.bucket_bytes, dtype, merged)
        start = time.perf_counter()
        deadline = self.timeout_s + 10
        publish = self._rpc(self.trainer.eps[0], "PublishWeights", trainer_pb2.PublishWeightsRequest(
            group_id=group_id, version=version, bucket_bytes=self.bucket_bytes, dtype=dtype, merged=merged), deadline)
        prepares = [self._rpc(ep, "PrepareWeightUpdate", convert.prepare_request(group_id, version,
                                                                                 self._manifests[dtype, merged]),
                              deadline) for ep in receivers]
        try:
            results = await _all_or_raise([publish, *prepares], f"weight sync to version {version}")
        except Aborted:
            self._groups.pop(name, None)  # the group is unusable after a failed collective: form anew next time
            await asyncio.gather(*(self._rpc(ep, "AbortWeightUpdate", weights_pb2.AbortWeightUpdateRequest(
                version=version, reason="sync failed"), 10) for ep in receivers), return_exceptions=True)
            raise
        sent = SyncResult(version, results[0].bytes, results[0].buckets, time.perf_counter() - start, len(receivers))
        await self._commit(name, receivers, sent, deadline)
        return dataclasses.replace(sent, seconds=time.perf_counter() - start)

    async def _commit(self, name: str, receivers: list[Endpoint], sent: SyncResult, deadline: float) -> None:
        """Every receiver swaps the staged version in. A receiver lost here leaves the group unusable and the
        others serving the new version: CommitFailed carries what was sent."""
        try:
            await _all_or_raise([self._rpc(ep, "CommitWeightUpdate", weights_pb2.CommitWeightUpdateRequest(
                version=sent.version), deadline) for ep in receivers], f"committing version {sent.version}")
        except Aborted as err:
            self._groups.pop(name, None)
            raise CommitFailed(str(err), sent) from err


async def _all_or_raise(calls: list, what: str) -> list:
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        details = "; ".join(f"{e.code().name}: {e.details()}" if isinstance(e, grpc.aio.AioRpcError) else repr(e)
                            for e in errors)
        raise Aborted(f"{what} failed: {details}")
    return results
