"""Coordinator-side conversions: role request/response protos <-> tensors and plain types."""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass

import torch

from alignmesh.protos.common.v1 import weights_pb2
from alignmesh.protos.reference.v1 import reference_pb2
from alignmesh.protos.reward.v1 import reward_pb2
from alignmesh.protos.rollout.v1 import rollout_pb2
from alignmesh.protos.trainer.v1 import trainer_pb2
from alignmesh.services.common.convert import decode, encode
from alignmesh.services.sync.convert import group_spec_to_proto
from alignmesh.services.sync.group import GroupSpec

# Replies of the methods a replica may serve over its same-host socket (``services/common/local_socket.py``).
LOCAL_REPLIES = {"Generate": rollout_pb2.GenerateResponse.FromString,
                 "ComputeLogProbs": reference_pb2.LogProbsResponse.FromString,
                 "Score": reward_pb2.ScoreResponse.FromString}

FINISH = {rollout_pb2.FINISH_REASON_STOP: "stop", rollout_pb2.FINISH_REASON_LENGTH: "length"}


@dataclass
class Rollouts:
    """Samples of one generate call; sample ``i * n + j`` is the j-th sample of prompt i."""

    completion_ids: torch.Tensor  # int64 [N, L]
    lengths: torch.Tensor  # int64 [N]
    logprobs: torch.Tensor  # float32 [N, L]
    finish_reasons: list[str]
    versions: torch.Tensor  # int64 [N]: weight version that produced each sample
    # Episodes (``coordinator/episodes.py``): 1.0 on the tokens the model sampled (observations 0), and each
    # sample's own prompt. None for single completions.
    loss_mask: torch.Tensor | None = None  # float32 [N, L]
    prompt_ids: list[list[int]] | None = None


def pad_right(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.int64)
    return ids, torch.tensor([len(r) for r in rows], dtype=torch.int64)


def generate_request(prompts: list[list[int]], pad: int, n: int, seed: int, temperature: float, top_p: float,
                     max_new_tokens: int, greedy: bool) -> rollout_pb2.GenerateRequest:
    ids, lengths = pad_right(prompts, pad)
    sampling = rollout_pb2.SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                          n=n, seed=seed, greedy=greedy)
    return rollout_pb2.GenerateRequest(prompt_ids=encode(ids), prompt_lengths=encode(lengths), sampling=sampling)


def rollouts_from_proto(resp: rollout_pb2.GenerateResponse) -> Rollouts:
    ids = decode(resp.completion_ids, "completion_ids", torch.int64, ndim=2)
    return Rollouts(ids, decode(resp.completion_lengths, "completion_lengths", torch.int64, ndim=1),
                    decode(resp.logprobs, "logprobs", torch.float32, ndim=2),
                    [FINISH.get(r, "unknown") for r in resp.finish_reasons],
                    torch.full((ids.shape[0],), resp.weight_version, dtype=torch.int64))


def concat_rollouts(parts: list[Rollouts], pad: int) -> Rollouts:
    width = max(p.completion_ids.shape[1] for p in parts)

    def widen(t: torch.Tensor, value) -> torch.Tensor:
        extra = width - t.shape[1]
        return torch.cat([t, torch.full((t.shape[0], extra), value, dtype=t.dtype)], 1) if extra else t

    return Rollouts(torch.cat([widen(p.completion_ids, pad) for p in parts]), torch.cat([p.lengths for p in parts]),
                    torch.cat([widen(p.logprobs, 0.0) for p in parts]),
                    [r for p in parts for r in p.finish_reasons], torch.cat([p.versions for p in parts]))


def score_request(items: list[tuple[str, str, dict[str, str]]], reward_fn: str) -> reward_pb2.ScoreRequest:
    return reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(prompt=p, completion=c, metadata=m)
                                          for p, c, m in items], reward_fn=reward_fn)


def scores_from_proto(resp: reward_pb2.ScoreResponse) -> torch.Tensor:
    return decode(resp.scores, "scores", torch.float32, ndim=1)


def logprobs_request(ids: torch.Tensor, mask: torch.Tensor, prompt_lengths: torch.Tensor | None = None
                     ) -> reference_pb2.LogProbsRequest:
    req = reference_pb2.LogProbsRequest(input_ids=encode(ids), attention_mask=encode(mask))
    if prompt_lengths is not None:
        req.prompt_lengths.CopyFrom(encode(prompt_lengths.to(torch.int64)))
    return req


def load_weights_request(path: str, version: int) -> reference_pb2.LoadWeightsRequest:
    return reference_pb2.LoadWeightsRequest(path=path, version=version)


def logprobs_from_proto(resp: reference_pb2.LogProbsResponse) -> torch.Tensor:
    return decode(resp.logprobs, "logprobs", torch.float32, ndim=2)


def train_request(ids: torch.Tensor, mask: torch.Tensor, loss_mask: torch.Tensor, advantages: torch.Tensor | None,
                  ref_logprobs: torch.Tensor | None, loss: dict, learning_rate: float | None,
                  returns: torch.Tensor | None = None, old_values: torch.Tensor | None = None,
                  behavior_logprobs: torch.Tensor | None = None) -> trainer_pb2.TrainStepRequest:
    req = trainer_pb2.TrainStepRequest(input_ids=encode(ids), attention_mask=encode(mask),
                                       loss_mask=encode(loss_mask.float()), loss=trainer_pb2.LossSpec(**loss),
                                       request_id=uuid.uuid4().hex)  # one id for the step and its retries
    if advantages is not None:
        req.advantages.CopyFrom(encode(advantages.float()))
    if ref_logprobs is not None:
        req.ref_logprobs.CopyFrom(encode(ref_logprobs.float()))
    if learning_rate is not None:
        req.learning_rate = learning_rate
    for name, t in (("returns", returns), ("old_values", old_values), ("behavior_logprobs", behavior_logprobs)):
        if t is not None:
            getattr(req, name).CopyFrom(encode(t.float()))
    return req


def values_request(ids: torch.Tensor, mask: torch.Tensor) -> trainer_pb2.ComputeValuesRequest:
    return trainer_pb2.ComputeValuesRequest(input_ids=encode(ids), attention_mask=encode(mask))


def values_from_proto(resp: trainer_pb2.ComputeValuesResponse) -> tuple[torch.Tensor, torch.Tensor]:
    return decode(resp.values, "values", torch.float32, ndim=2), decode(resp.scores, "scores", torch.float32, ndim=1)


def join_request(spec: GroupSpec) -> weights_pb2.JoinSyncGroupRequest:
    return group_spec_to_proto(spec)


def prepare_request(group_id: str, version: int, manifest: weights_pb2.WeightManifest,
                    ) -> weights_pb2.PrepareWeightUpdateRequest:
    return weights_pb2.PrepareWeightUpdateRequest(group_id=group_id, version=version, manifest=manifest)


# -- coordinator's own service ----------------------------------------------------------------------------------
from alignmesh.protos.coordinator.v1 import coordinator_pb2  # noqa: E402

_STATES = {"queued": coordinator_pb2.JOB_STATE_QUEUED, "running": coordinator_pb2.JOB_STATE_RUNNING,
           "succeeded": coordinator_pb2.JOB_STATE_SUCCEEDED, "failed": coordinator_pb2.JOB_STATE_FAILED,
           "cancelled": coordinator_pb2.JOB_STATE_CANCELLED, "paused": coordinator_pb2.JOB_STATE_PAUSED}


def job_to_proto(rec) -> coordinator_pb2.Job:
    return coordinator_pb2.Job(id=rec.id, name=rec.name, state=_STATES[rec.state], config_yaml=rec.config_yaml,
                               created_at=rec.created_at, started_at=rec.started_at, finished_at=rec.finished_at,
                               error=rec.error, step=rec.step,
                               metrics={k: float(v) for k, v in rec.metrics.items()}, run_dir=rec.run_dir)


def event_to_proto(ev) -> coordinator_pb2.JobEvent:
    p = ev.payload
    return coordinator_pb2.JobEvent(job_id=ev.job_id, seq=ev.seq, time=ev.time, kind=ev.kind,
                                    state=_STATES.get(p.get("state", ""), 0), stage=p.get("stage", ""),
                                    step=int(p.get("step", 0)),
                                    metrics={k: float(v) for k, v in p.get("metrics", {}).items()},
                                    message=p.get("message", ""))


DEFAULT_PAGE, MAX_PAGE = 100, 1000


def list_request_from_proto(req: coordinator_pb2.ListJobsRequest) -> tuple[int, tuple[float, str] | None, str]:
    """(page size, the (created_at, id) to list after, state filter); errors name the field."""
    from alignmesh.services.common.errors import InvalidArgument

    if req.page_size < 0:
        raise InvalidArgument("page_size", f"must be >= 0 (0: {DEFAULT_PAGE}), got {req.page_size}")
    size = min(req.page_size or DEFAULT_PAGE, MAX_PAGE)
    if req.state and req.state not in _STATES:
        raise InvalidArgument("state", f"must be one of {sorted(_STATES)} or empty, got {req.state[:40]!r}")
    after = None
    if req.page_token:
        try:
            created, _, job_id = base64.urlsafe_b64decode(req.page_token.encode()).decode().partition("|")
            after = (float(created), job_id)
        except (ValueError, UnicodeError, binascii.Error):
            raise InvalidArgument("page_token", "is not a token from a previous ListJobs reply") from None
    return size, after, req.state


def page_token(rec) -> str:
    """The opaque token of the page after ``rec``."""
    return base64.urlsafe_b64encode(f"{rec.created_at!r}|{rec.id}".encode()).decode()


def member_to_proto(view) -> coordinator_pb2.Member:
    return coordinator_pb2.Member(role=view.role, address=view.address, source=view.source, state=view.state,
                                  lease_left_s=view.lease_left_s, metrics_address=view.metrics_address)
