"""Trainer protos <-> backend types."""

from __future__ import annotations

import torch

from alignmesh.protos.trainer.v1 import trainer_pb2
from alignmesh.services.common.convert import decode, dtype_from_name, encode
from alignmesh.services.common.errors import InvalidArgument
from alignmesh.services.trainer.backend import CheckpointInfo, Experience, LossSpec, TrainerStateInfo


def _optional(msg, name: str, shape0: int) -> torch.Tensor | None:
    field = getattr(msg, name)
    if not field.dtype:
        return None
    t = decode(field, name, torch.float32)
    if t.shape[0] != shape0:
        raise InvalidArgument(name, f"first dimension {t.shape[0]} must equal the batch size {shape0}")
    return t


def experience_from_proto(req: trainer_pb2.TrainStepRequest, vocab_size: int) -> Experience:
    ids = decode(req.input_ids, "input_ids", torch.int64, ndim=2)
    if ids.shape[0] == 0:
        raise InvalidArgument("input_ids", "holds no sequences")
    if (ids < 0).any() or (ids >= vocab_size).any():
        raise InvalidArgument("input_ids", f"token ids must be in [0, {vocab_size})")
    mask = decode(req.attention_mask, "attention_mask", ndim=2).to(torch.int64)
    loss_mask = decode(req.loss_mask, "loss_mask", torch.float32, ndim=2)
    for name, t in (("attention_mask", mask), ("loss_mask", loss_mask)):
        if t.shape != ids.shape:
            raise InvalidArgument(name, f"shape {list(t.shape)} must equal input_ids shape {list(ids.shape)}")
    adv = _optional(req, "advantages", ids.shape[0])
    if adv is not None and adv.dim() == 2 and adv.shape != ids.shape:
        raise InvalidArgument("advantages", f"must be [B] or [B, T] = {list(ids.shape)}, got {list(adv.shape)}")
    ref = _optional(req, "ref_logprobs", ids.shape[0])
    if ref is not None and ref.shape != ids.shape:
        raise InvalidArgument("ref_logprobs", f"shape {list(ref.shape)} must equal input_ids shape "
                                              f"{list(ids.shape)}")
    extra = {}
    for name in ("returns", "old_values", "behavior_logprobs"):
        t = _optional(req, name, ids.shape[0])
        if t is not None and t.shape != ids.shape:
            raise InvalidArgument(name, f"shape {list(t.shape)} must equal input_ids shape {list(ids.shape)}")
        extra[name] = t
    return Experience(ids, mask, loss_mask, adv, ref, **extra)


_KNOBS = ("clip_eps", "kl_coef", "epochs", "micro_batch_size", "beta", "variant", "label_smoothing", "off_policy",
          "is_cap", "clip_eps_high")


def loss_from_proto(msg: trainer_pb2.LossSpec) -> LossSpec:
    """Unset knobs keep ``LossSpec``'s defaults; a knob that is set is taken as sent (0 included)."""
    knobs = {k: getattr(msg, k) for k in _KNOBS if msg.HasField(k)}
    spec = LossSpec(name=msg.name or "policy_gradient", params=dict(msg.params), **knobs)
    if spec.variant not in ("sigmoid", "ipo"):
        raise InvalidArgument("loss.variant", f"must be sigmoid or ipo, got {spec.variant!r}")
    if not 0 <= spec.label_smoothing < 0.5:
        raise InvalidArgument("loss.label_smoothing", f"must be in [0, 0.5), got {spec.label_smoothing}")
    if not spec.beta > 0:
        raise InvalidArgument("loss.beta", f"must be > 0, got {spec.beta}")
    if not spec.clip_eps >= 0:
        raise InvalidArgument("loss.clip_eps", f"must be >= 0, got {spec.clip_eps}")
    if spec.clip_eps_high is not None and not 0 <= spec.clip_eps_high < 10:
        raise InvalidArgument("loss.clip_eps_high", f"must be in [0, 10), got {spec.clip_eps_high}")
    if not spec.kl_coef >= 0:
        raise InvalidArgument("loss.kl_coef", f"must be >= 0, got {spec.kl_coef}")
    if spec.micro_batch_size < 0:
        raise InvalidArgument("loss.micro_batch_size", f"must be >= 0 (0: the whole batch), got "
                                                       f"{spec.micro_batch_size}")
    if spec.off_policy not in ("none", "tis", "decoupled", "sequence_tis"):
        raise InvalidArgument("loss.off_policy", f"must be none, tis, decoupled or sequence_tis, got "
                                                 f"{spec.off_policy!r}")
    if not spec.is_cap >= 1.0 or spec.is_cap == float("inf"):
        raise InvalidArgument("loss.is_cap", f"must be a finite number >= 1, got {spec.is_cap}")
    if spec.epochs < 1:
        raise InvalidArgument("loss.epochs", f"must be >= 1, got {spec.epochs}")
    bad = [k for k, v in spec.params.items() if v != v or v in (float("inf"), float("-inf"))]
    if bad:
        raise InvalidArgument(f"loss.params[{bad[0]!r}]", "must be a finite number")
    return spec


def learning_rate_from_proto(req: trainer_pb2.TrainStepRequest) -> float | None:
    if not req.HasField("learning_rate"):
        return None
    if req.learning_rate <= 0:
        raise InvalidArgument("learning_rate", f"must be > 0, got {req.learning_rate}")
    return req.learning_rate


def checkpoint_to_proto(info: CheckpointInfo) -> trainer_pb2.CheckpointInfo:
    return trainer_pb2.CheckpointInfo(path=info.path, step=info.step, weight_version=info.weight_version)


def state_to_proto(s: TrainerStateInfo) -> trainer_pb2.TrainerState:
    return trainer_pb2.TrainerState(step=s.step, weight_version=s.weight_version, num_parameters=s.num_parameters,
                                    device=s.device, learning_rate=s.learning_rate)


def values_request_from_proto(req: trainer_pb2.ComputeValuesRequest, vocab_size: int):
    ids = decode(req.input_ids, "input_ids", torch.int64, ndim=2)
    mask = decode(req.attention_mask, "attention_mask", ndim=2).to(torch.int64)
    if mask.shape != ids.shape:
        raise InvalidArgument("attention_mask", f"shape {list(mask.shape)} must equal input_ids shape "
                                                f"{list(ids.shape)}")
    if ids.shape[0] == 0 or (ids < 0).any() or (ids >= vocab_size).any() or (mask.sum(dim=1) < 1).any():
        raise InvalidArgument("input_ids", f"need >= 1 sequence, ids in [0, {vocab_size}), >= 1 real token each")
    return ids, mask


def values_to_proto(values: torch.Tensor, scores: torch.Tensor) -> trainer_pb2.ComputeValuesResponse:
    return trainer_pb2.ComputeValuesResponse(values=encode(values.float()), scores=encode(scores.float()))


SYNC_DTYPES = ("float32", "bfloat16", "float16")


def sync_dtype(name: str) -> torch.dtype | None:
    """The dtype the receivers serve ("" = as trained)."""
    if not name:
        return None
    if name not in SYNC_DTYPES:
        raise InvalidArgument("dtype", f"weights are pushed as one of {', '.join(SYNC_DTYPES)}, got {name!r}")
    return dtype_from_name(name)
