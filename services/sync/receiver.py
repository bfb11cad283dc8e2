"""Receiver side (rollout, reference): stage, verify, then swap in atomically; keep old weights on failure."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from alignmesh.services.common.errors import Aborted, FailedPrecondition, InvalidArgument
from alignmesh.services.models.offload import Offload, SleepStats, module_tensors
from alignmesh.services.sync import buckets as bk
from alignmesh.services.sync.group import SyncError, SyncGroup


@dataclass
class Staged:
    version: int
    tensors: dict[str, torch.Tensor]
    bytes: int
    buckets: int
    seconds: float
    flats: dict = field(default_factory=dict)  # bucket key -> the flat buffer the tensors are views of

def check_manifest(own: list[bk.Spec], incoming: list[bk.Spec]) -> None:
    """Names, dtypes and shapes must match exactly; the first difference is named."""
    mine = {s.name: s for s in own}
    theirs = {s.name: s for s in incoming}
    for name in theirs.keys() - mine.keys():
        raise FailedPrecondition(f"manifest: sender has parameter {name!r} that this model lacks")
    for name in mine.keys() - theirs.keys():
        raise FailedPrecondition(f"manifest: parameter {name!r} of this model is missing from the sender")
    for name, spec in theirs.items():
        if spec.dtype != mine[name].dtype or spec.shape != mine[name].shape:
            raise FailedPrecondition(f"manifest: {name} is {spec.dtype}{list(spec.shape)} on the sender, "
                                     f"{mine[name].dtype}{list(mine[name].shape)} here")


def receive_verified(group: SyncGroup, version: int, specs: list[bk.Spec], bucket_bytes: int,
                     serving: int, spare: dict | None = None) -> Staged:
    """Receive one published version, check the trailer and every bucket's checksum.

    Buckets land in buffers taken from ``spare`` (bucket key -> flat tensor no longer in use) when one fits, else
    in fresh ones; each bucket is checksummed while the next one is on the wire. Raises SyncError when the
    transfer fails, Aborted when it arrives but does not verify (``serving`` is the version that stays in use,
    for the message).
    """
    start = time.perf_counter()
    plan = bk.plan(specs, bucket_bytes)
    got, flats, sums = _receive_buckets(group, plan, spare if spare is not None else {})
    if got[0] == bk.WITHDRAWN:
        raise Aborted(f"weight sync: the trainer withdrew version {version} (its weights are not finite); update "
                      f"discarded, still serving {serving}")
    if got[0] != version or got[1] != len(plan):
        raise Aborted(f"weight sync: trailer says version {got[0]} with {got[1]} buckets, expected version "
                      f"{version} with {len(plan)}; update discarded, still serving {serving}")
    for i, checksum in enumerate(sums):
        if checksum != (got[3 + 2 * i], got[4 + 2 * i]):
            raise Aborted(f"weight sync: bucket {i} of {len(plan)} failed its checksum; update to version "
                          f"{version} discarded, still serving {serving}")
    tensors: dict[str, torch.Tensor] = {}
    for bucket, flat in zip(plan, flats.values()):
        tensors.update(bk.unpack(bucket, flat))
    return Staged(version, tensors, sum(b.nbytes for b in plan), len(plan), time.perf_counter() - start, flats)


def staged_for(staged: Staged | None, version: int) -> Staged:
    """The staged update a commit of ``version`` swaps in; FailedPrecondition when another (or none) is staged."""
    if staged is None or staged.version != version:
        raise FailedPrecondition(f"version: nothing staged for version {version} "
                                 f"(staged: {staged.version if staged else -1}); prepare it first")
    return staged


def bucket_key(i: int, bucket: bk.Bucket) -> tuple:
    return i, bucket.dtype, bucket.numel


def _receive_buckets(group: SyncGroup, plan: list[bk.Bucket], spare: dict):
    """Post bucket i+1's receive before checksumming bucket i; returns (trailer, flats by key, checksums)."""
    flats = {}
    for i, bucket in enumerate(plan):
        key = bucket_key(i, bucket)
        flat = spare.pop(key, None)
        flats[key] = flat if flat is not None else torch.empty(bucket.numel, dtype=bucket.dtype, device=group.device)
    buffers = list(flats.values())
    sums = []
    work = group.broadcast_async(buffers[0]) if buffers else None
    for i, flat in enumerate(buffers):
        group.wait(work)
        work = group.broadcast_async(buffers[i + 1]) if i + 1 < len(buffers) else None
        sums.append(bk.checksum(flat))
    trailer = torch.zeros(bk.header_len(len(plan)), dtype=torch.int64, device=group.device)
    group.broadcast(trailer)
    return trailer.tolist(), flats, sums


class SwapBetweenRequests:
    """A committed version goes into the model at once when it is idle, else when the request in flight ends:
    a commit never waits for a request. Needs ``lock`` (held while the model is in use), ``_served`` (the version
    the model holds) and ``_swap_in()`` (puts the pending version in; called with ``lock`` held)."""

    def _swap_when_idle(self) -> None:
        if self.lock.acquire(blocking=False):
            try:
                self._swap_in()
            finally:
                self.lock.release()

    @contextmanager
    def serving(self):
        """Hold the model for one request; yields the weight version it serves for the whole request."""
        with self.lock:
            self._check_awake("this request")
            self._swap_in()
            yield self._served

    def _check_awake(self, what: str) -> None:
        offload = getattr(self, "offload", None)
        if offload is not None and offload.asleep:
            raise FailedPrecondition(f"asleep: the model's memory is offloaded (Sleep); Wake it before {what}")


class WeightReceiver(SwapBetweenRequests):
    """Owns a model's weight version. Use the model only inside ``serving()``.

    A commit never waits for a request in flight: it makes the staged version the committed one (``version``,
    what every request that starts after the commit's reply serves) and swaps it into the model at once when the
    model is idle, else when the request in flight ends (the next ``serving()``). Replicas therefore switch
    versions between requests while a job keeps them busy, and a push does not wait for a long generate call.
    """

    def __init__(self, model: torch.nn.Module, version: int = 0):
        self.model = model
        self.version = version  # committed: served by every request that starts from now on
        self.lock = threading.Lock()  # held while the model is in use, and while weights are swapped in
        self.group: SyncGroup | None = None
        self._staged: Staged | None = None
        self._pending: Staged | None = None  # committed, not yet swapped in (a request was in flight)
        self._served = version  # the version the model's parameters hold
        self._meta = threading.Lock()  # guards _pending / version against a concurrent commit
        # Double buffering: the flats the model serves from, and those of the version before (free to refill).
        self._live: dict = {}
        self._spare: dict = {}
        self.offload: Offload | None = None  # set while the model sleeps

    def sleep(self, directory: str | None = None) -> SleepStats:
        """Offload the model (``services/models/offload.py``) once no request holds it; a committed version still
        waiting goes in first, a staged one is dropped (the coordinator pushes only to an awake replica)."""
        with self.lock:
            self._swap_in()
            self._staged, self._spare, self._live = None, {}, {}  # params own their storage from here on
            device = str(next(self.model.parameters()).device)
            self.offload = self.offload if self.offload is not None and self.offload.asleep else Offload(device, directory)
            return self.offload.put(module_tensors(self.model))

    def wake(self) -> tuple[int, float]:
        with self.lock:
            return self.offload.take() if self.offload is not None else (0, 0.0)

    @property
    def staged_version(self) -> int:
        return self._staged.version if self._staged else -1

    def own_specs(self) -> list[bk.Spec]:
        """What the channel moves into this model: its trainable parameters (with LoRA: the adapters)."""
        return bk.specs_of([(n, p) for n, p in self.model.named_parameters() if p.requires_grad])

    def receive(self, group_id: str, version: int, specs: list[bk.Spec], bucket_bytes: int) -> Staged:
        """Receive version ``version`` into fresh buffers and verify every bucket; stage on success."""
        group = self.group
        if group is None or group.spec.group_id != group_id:
            raise FailedPrecondition(f"group_id: not a member of sync group {group_id!r}; join it first")
        if version <= self.version:
            raise InvalidArgument("version", f"must be newer than the served version {self.version}, got {version}")
        self._check_awake("a weight update")
        check_manifest(self.own_specs(), specs)
        self._staged = None
        try:
            spare, self._spare = self._spare, {}
            self._staged = receive_verified(group, version, specs, bucket_bytes, self.version, spare)
        except SyncError as exc:
            self.group = None
            group.close()
            raise Aborted(f"weight sync to version {version} failed, still serving {self.version}; the sync "
                          f"group must be formed again: {exc}") from exc
        return self._staged

    def commit(self, version: int) -> int:
        """Commit the staged ``version``: swapped in now if the model is idle, else after the request in flight."""
        staged = staged_for(self._staged, version)
        with self._meta:
            if self._pending is not None:  # committed over before any request served it: its buffers are free
                self._spare.update(self._pending.flats)
            self._pending, self._staged, self.version = staged, None, version
        self._swap_when_idle()
        return self.version

    def _swap_in(self) -> None:
        """Put the pending version into the model (the caller holds ``lock``)."""
        with self._meta:
            staged, self._pending = self._pending, None
        if staged is None:
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in staged.tensors.items():
                params[name].data = tensor  # adopt the verified buffer: no copy (tied weights share the Parameter)
        self._served = staged.version
        self._spare, self._live = self._live, staged.flats  # the previous version's buffers are free now

    def adopt(self, tensors: dict[str, torch.Tensor], version: int) -> int:
        """Serve ``tensors`` (same names, dtypes and shapes as the model's) as ``version``, swapped in atomically;
        for weights that arrive by another road than the channel (a model directory)."""
        if version <= 0:
            raise InvalidArgument("version", f"must be > 0, got {version}")
        self._check_awake("loading weights")
        check_manifest(self.own_specs(), bk.specs_of(list(tensors.items())))
        params = dict(self.model.named_parameters())
        with self.lock, torch.no_grad():
            self._check_awake("loading weights")
            with self._meta:
                self._pending, self._staged = None, None
            for name, tensor in tensors.items():
                params[name].data = tensor
            self.version = self._served = version
            self._spare, self._live = self._live, {}
        return self.version

    def abort(self, version: int) -> int:
        if self._staged is not None and (version <= 0 or self._staged.version == version):
            self._spare.update(self._staged.flats)  # never served: reusable
            self._staged = None
        return self.version

    def join(self, group: SyncGroup) -> None:
        old, self.group = self.group, group
        if old is not None:
            old.close()


__all__ = ["SwapBetweenRequests", "WeightReceiver", "Staged", "check_manifest", "receive_verified", "staged_for",
           "SyncError"]
