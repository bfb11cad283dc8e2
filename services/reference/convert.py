"""Reference protos <-> tensors."""

from __future__ import annotations

import torch

from alignmesh.protos.reference.v1 import reference_pb2
from alignmesh.services.common.convert import decode, encode
from alignmesh.services.common.errors import InvalidArgument


def batch_from_proto(req: reference_pb2.LogProbsRequest, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = decode(req.input_ids, "input_ids", torch.int64, ndim=2)
    mask = decode(req.attention_mask, "attention_mask", ndim=2).to(torch.int64)
    if mask.shape != ids.shape:
        raise InvalidArgument("attention_mask", f"shape {list(mask.shape)} must equal input_ids shape "
                                                f"{list(ids.shape)}")
    if ids.numel() and ((ids < 0).any() or (ids >= vocab_size).any()):
        raise InvalidArgument("input_ids", f"token ids must be in [0, {vocab_size})")
    return ids, mask


def logprobs_to_proto(logprobs: torch.Tensor, version: int) -> reference_pb2.LogProbsResponse:
    return reference_pb2.LogProbsResponse(logprobs=encode(logprobs), weight_version=version)


def load_request_from_proto(req: reference_pb2.LoadWeightsRequest) -> tuple[str, int]:
    from pathlib import Path

    from alignmesh.services.common.errors import NotFound

    if req.version <= 0:
        raise InvalidArgument("version", f"must be > 0, got {req.version}")
    if not req.path:
        raise InvalidArgument("path", "must name a model directory")
    if not (Path(req.path) / "config.json").is_file():
        raise NotFound(f"path: {req.path} is not a model directory on this replica (no config.json)")
    return req.path, req.version
