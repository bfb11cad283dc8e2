"""Proto <-> sync types (manifests, group specs)."""

from __future__ import annotations

from alignmesh.protos.common.v1 import weights_pb2
from alignmesh.services.common.convert import dtype_from_name, dtype_name
from alignmesh.services.common.errors import InvalidArgument
from alignmesh.services.sync.buckets import Spec
from alignmesh.services.sync.group import GroupSpec


def group_spec_from_proto(req: weights_pb2.JoinSyncGroupRequest) -> GroupSpec:
    if not req.group_id:
        raise InvalidArgument("group_id", "must be set")
    if req.world_size < 2 or not 0 <= req.rank < req.world_size:
        raise InvalidArgument("rank", f"must be in [0, world_size) with world_size >= 2, got rank {req.rank} "
                                      f"of {req.world_size}")
    if not req.store_host or req.store_port <= 0:
        raise InvalidArgument("store_port", "store_host and store_port must name the rendezvous store")
    if req.backend not in ("", "auto", "gloo", "nccl"):
        raise InvalidArgument("backend", f"must be auto, gloo or nccl, got {req.backend!r}")
    return GroupSpec(req.group_id, req.store_host, req.store_port, req.world_size, req.rank,
                     req.backend or "auto", req.timeout_s or 60.0)


def group_spec_to_proto(spec: GroupSpec) -> weights_pb2.JoinSyncGroupRequest:
    return weights_pb2.JoinSyncGroupRequest(group_id=spec.group_id, store_host=spec.store_host,
                                            store_port=spec.store_port, world_size=spec.world_size,
                                            rank=spec.rank, backend=spec.backend, timeout_s=spec.timeout_s)


def manifest_to_proto(specs: list[Spec], bucket_bytes: int) -> weights_pb2.WeightManifest:
    return weights_pb2.WeightManifest(
        params=[weights_pb2.ParamSpec(name=s.name, dtype=dtype_name(s.dtype), shape=list(s.shape)) for s in specs],
        bucket_bytes=bucket_bytes, total_bytes=sum(s.nbytes for s in specs))


def manifest_from_proto(msg: weights_pb2.WeightManifest) -> tuple[list[Spec], int]:
    if msg.bucket_bytes <= 0:
        raise InvalidArgument("manifest.bucket_bytes", f"must be > 0, got {msg.bucket_bytes}")
    if not msg.params:
        raise InvalidArgument("manifest.params", "is empty")
    specs = [Spec(p.name, dtype_from_name(p.dtype, f"manifest.params[{i}].dtype"), tuple(p.shape))
             for i, p in enumerate(msg.params)]
    return specs, msg.bucket_bytes
