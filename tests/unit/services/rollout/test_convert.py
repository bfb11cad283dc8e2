"""The rollout's request decoding: prompts cut to their lengths, and every malformed field named."""

from __future__ import annotations

import pytest
import torch

from alignmesh.protos.rollout.v1 import rollout_pb2
from alignmesh.services.common.convert import encode
from alignmesh.services.common.errors import InvalidArgument
from alignmesh.services.rollout.convert import prompts_from_proto


def request(ids, lengths) -> rollout_pb2.GenerateRequest:
    return rollout_pb2.GenerateRequest(prompt_ids=encode(torch.tensor(ids, dtype=torch.int64)),
                                       prompt_lengths=encode(torch.tensor(lengths, dtype=torch.int64)))


def test_prompts_are_cut_to_their_lengths():
    assert prompts_from_proto(request([[5, 6, 7], [8, 9, 0]], [3, 2]), 10) == [[5, 6, 7], [8, 9]]


@pytest.mark.parametrize("ids, lengths, message", [
    ([[1, 2]], [1, 1], "prompt_lengths: has 2 entries for 1 prompts"),
    ([[1, 2]], [0], r"prompt_lengths: each length must be in \[1, 2\]"),
    ([[1, 2]], [3], r"prompt_lengths: each length must be in \[1, 2\]"),
    ([[1, -2]], [2], r"prompt_ids: token ids must be in \[0, 10\)"),
    ([[1, 10]], [2], r"prompt_ids: token ids must be in \[0, 10\)"),
])
def test_malformed_prompts_name_the_field(ids, lengths, message):
    with pytest.raises(InvalidArgument, match=message):
        prompts_from_proto(request(ids, lengths), 10)
