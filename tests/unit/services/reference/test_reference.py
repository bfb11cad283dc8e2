"""The reference backend with prompt lengths: each group's shared prompt computed once, the same log-probabilities
as the plain forward (to float rounding); and its request decoding, which names every malformed field."""

from __future__ import annotations

import pytest
import torch

from alignmesh.protos.reference.v1 import reference_pb2
from alignmesh.services.common.convert import encode
from alignmesh.services.common.errors import InvalidArgument
from alignmesh.services.models.logprobs import prefix_runs, token_logprobs
from alignmesh.services.reference.backend import TorchReferenceBackend
from alignmesh.services.reference.convert import batch_from_proto


def groups() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three prompts (5, 3 and 4 tokens) with 4 sampled completions each, right padded: a GRPO batch."""
    gen = torch.Generator().manual_seed(0)
    seqs, lengths = [], []
    for plen in (5, 3, 4):
        prompt = torch.randint(3, 15, (plen,), generator=gen).tolist()
        for _ in range(4):
            seqs.append(prompt + torch.randint(3, 15, (int(torch.randint(1, 5, (1,), generator=gen)),),
                                               generator=gen).tolist())
            lengths.append(plen)
    width = max(len(s) for s in seqs)
    ids, mask = torch.zeros((len(seqs), width), dtype=torch.long), torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    return ids, mask, torch.tensor(lengths)


@pytest.mark.parametrize("micro_batch_size", [512, 5])  # 5: micro-batches cut through groups
def test_shared_prompts_give_the_plain_forwards_logprobs(tiny_model_dir, micro_batch_size):
    ids, mask, lengths = groups()
    assert prefix_runs(ids, mask, lengths)[1].tolist() == [5, 3, 4]  # the three groups share their prompts
    ref = TorchReferenceBackend(str(tiny_model_dir), micro_batch_size=micro_batch_size)
    shared, version = ref.logprobs(ids, mask, lengths)
    with torch.no_grad():
        plain = token_logprobs(ref.model, ids, mask)
    assert version == 0 and shared.shape == ids.shape
    assert torch.allclose(shared, plain, atol=1e-5, rtol=0) and not torch.equal(shared, torch.zeros_like(shared))
    assert torch.equal(ref.logprobs(ids, mask)[0], plain)  # no lengths: the plain forward itself
    off = TorchReferenceBackend(str(tiny_model_dir), micro_batch_size=micro_batch_size, shared_prefix=False)
    assert torch.equal(off.logprobs(ids, mask, lengths)[0], plain)


def request(ids, mask, lengths=None) -> reference_pb2.LogProbsRequest:
    req = reference_pb2.LogProbsRequest(input_ids=encode(ids), attention_mask=encode(mask))
    if lengths is not None:
        req.prompt_lengths.CopyFrom(encode(lengths))
    return req


def test_prompt_lengths_are_optional_and_checked():
    ids, mask, lengths = groups()
    assert batch_from_proto(request(ids, mask), 32)[2] is None
    assert torch.equal(batch_from_proto(request(ids, mask, lengths), 32)[2], lengths)
    for bad, message in ((lengths[:-1], "prompt_lengths: has 11 entries for 12 rows"),
                         (lengths - 6, r"prompt_lengths: each length must be in \[0, 9\]"),
                         (lengths + 9, r"prompt_lengths: each length must be in \[0, 9\]"),
                         (lengths.float(), "prompt_lengths: dtype must be int64")):
        with pytest.raises(InvalidArgument, match=message):
            batch_from_proto(request(ids, mask, bad), 32)
