"""Rollout protos <-> backend types."""

from __future__ import annotations

import torch

from alignmesh.protos.rollout.v1 import rollout_pb2
from alignmesh.services.common.convert import decode, encode
from alignmesh.services.common.errors import InvalidArgument
from alignmesh.services.rollout.backend import STOP, Generation, SamplingParams

_REASONS = {STOP: rollout_pb2.FINISH_REASON_STOP, "length": rollout_pb2.FINISH_REASON_LENGTH}
MAX_N = 1024  # samples per prompt in one request
MAX_SEQUENCES = 1 << 16  # prompts x n in one request


def prompts_from_proto(req: rollout_pb2.GenerateRequest, vocab_size: int) -> list[list[int]]:
    ids = decode(req.prompt_ids, "prompt_ids", torch.int64, ndim=2).numpy()  # numpy: ~4x less per-call overhead
    lengths = decode(req.prompt_lengths, "prompt_lengths", torch.int64, ndim=1).numpy()
    if lengths.shape[0] != ids.shape[0]:
        raise InvalidArgument("prompt_lengths", f"has {lengths.shape[0]} entries for {ids.shape[0]} prompts")
    if ids.shape[0] == 0:
        raise InvalidArgument("prompt_ids", "holds no prompts")
    if lengths.min() < 1 or lengths.max() > ids.shape[1]:
        raise InvalidArgument("prompt_lengths", f"each length must be in [1, {ids.shape[1]}]")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise InvalidArgument("prompt_ids", f"token ids must be in [0, {vocab_size})")
    return [row[:n].tolist() for row, n in zip(ids, lengths.tolist())]


def sampling_from_proto(msg: rollout_pb2.SamplingParams) -> SamplingParams:
    params = SamplingParams(temperature=msg.temperature or 1.0,
                            top_p=msg.top_p or 1.0, max_new_tokens=msg.max_new_tokens, n=msg.n or 1,
                            seed=msg.seed, greedy=msg.greedy)
    if params.max_new_tokens < 1:
        raise InvalidArgument("sampling.max_new_tokens", f"must be >= 1, got {params.max_new_tokens}")
    if not 0 < params.top_p <= 1:
        raise InvalidArgument("sampling.top_p", f"must be in (0, 1], got {params.top_p}")
    if params.temperature < 0:
        raise InvalidArgument("sampling.temperature", f"must be >= 0, got {params.temperature}")
    if not 1 <= params.n <= MAX_N:
        raise InvalidArgument("sampling.n", f"must be in [1, {MAX_N}], got {params.n}")
    return params


def check_budget(prompts: list[list[int]], params: SamplingParams, context: int) -> None:
    """Every prompt plus ``max_new_tokens`` fits the model's context (never a silent truncation, never a run past
    the position table), and the request's size is bounded. ``context`` 0: the model does not say."""
    if len(prompts) * params.n > MAX_SEQUENCES:
        raise InvalidArgument("prompt_ids", f"{len(prompts)} prompts x sampling.n {params.n} exceeds "
                                            f"{MAX_SEQUENCES} sequences per request; split the request")
    if not context:
        return
    if params.max_new_tokens >= context:
        raise InvalidArgument("sampling.max_new_tokens", f"{params.max_new_tokens} leaves no room for a prompt in "
                                                         f"the model's context of {context} tokens")
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    if len(prompts[longest]) + params.max_new_tokens > context:
        raise InvalidArgument(f"prompt_ids[{longest}]", f"{len(prompts[longest])} prompt tokens + "
                                                        f"sampling.max_new_tokens {params.max_new_tokens} exceed the "
                                                        f"model's context of {context} tokens; shorten the prompt "
                                                        f"or max_new_tokens")


def generation_to_proto(gen: Generation) -> rollout_pb2.GenerateResponse:
    return rollout_pb2.GenerateResponse(
        completion_ids=encode(gen.completion_ids), completion_lengths=encode(gen.completion_lengths),
        logprobs=encode(gen.logprobs.float()), finish_reasons=[_REASONS[r] for r in gen.finish_reasons],
        weight_version=gen.weight_version)
