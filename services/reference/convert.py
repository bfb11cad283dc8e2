"""Reference protos <-> tensors."""

from __future__ import annotations

import torch

from alignmesh.protos.reference.v1 import reference_pb2
from alignmesh.services.common.convert import decode, encode
from alignmesh.services.common.errors import InvalidArgument


def batch_from_proto(req: reference_pb2.LogProbsRequest, vocab_size: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(input_ids, attention_mask, prompt_lengths or None)``, each checked against the others."""
    ids = decode(req.input_ids, "input_ids", torch.int64, ndim=2)
    mask = decode(req.attention_mask, "attention_mask", ndim=2).to(torch.int64)
    if mask.shape != ids.shape:
        raise InvalidArgument("attention_mask", f"shape {list(mask.shape)} must equal input_ids shape "
                                                f"{list(ids.shape)}")
    if ids.numel() and ((ids < 0).any() or (ids >= vocab_size).any()):
        raise InvalidArgument("input_ids", f"token ids must be in [0, {vocab_size})")
    if not req.HasField("prompt_lengths"):
        return ids, mask, None
    lengths = decode(req.prompt_lengths, "prompt_lengths", torch.int64, ndim=1)
    if lengths.shape[0] != ids.shape[0]:
        raise InvalidArgument("prompt_lengths", f"has {lengths.shape[0]} entries for {ids.shape[0]} rows")
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > ids.shape[1]):
        raise InvalidArgument("prompt_lengths", f"each length must be in [0, {ids.shape[1]}]")
    return ids, mask, lengths


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
