"""Reward protos <-> registry types."""

from __future__ import annotations

import torch

from alignmesh.protos.reward.v1 import reward_pb2
from alignmesh.services.common.convert import encode
from alignmesh.services.common.errors import InvalidArgument
from alignmesh.services.reward.registry import Item


def items_from_proto(req: reward_pb2.ScoreRequest) -> list[Item]:
    if not req.items:
        raise InvalidArgument("items", "is empty; send at least one (prompt, completion)")
    return [Item(it.prompt, it.completion, dict(it.metadata)) for it in req.items]


def scores_to_proto(scores: list[float], name: str) -> reward_pb2.ScoreResponse:
    return reward_pb2.ScoreResponse(scores=encode(torch.tensor(scores, dtype=torch.float32)), reward_fn=name)
