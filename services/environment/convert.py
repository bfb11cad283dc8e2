"""Environment protos <-> episode table types."""

from __future__ import annotations

from alignmesh.protos.environment.v1 import environment_pb2 as pb
from alignmesh.services.common.errors import InvalidArgument
from alignmesh.services.environment.base import Transition

MAX_ID = 128
MAX_TEXT = 65536  # characters of a prompt or an action (one model turn)


def _id(value: str, where: str) -> str:
    if not value or len(value) > MAX_ID:
        raise InvalidArgument(where, f"must be 1-{MAX_ID} characters, got {len(value)}")
    return value


def _text(value: str, where: str) -> str:
    if len(value) > MAX_TEXT:
        raise InvalidArgument(where, f"at most {MAX_TEXT} characters, got {len(value)}")
    return value


def starts_from_proto(req: pb.ResetRequest) -> list[tuple[str, str, dict[str, str], int]]:
    if not req.episodes:
        raise InvalidArgument("episodes", "is empty; send at least one episode to start")
    return [(_id(e.episode_id, f"episodes[{i}].episode_id"), _text(e.prompt, f"episodes[{i}].prompt"),
             dict(e.metadata), int(e.seed)) for i, e in enumerate(req.episodes)]


def actions_from_proto(req: pb.StepRequest) -> list[tuple[str, str]]:
    if not req.actions:
        raise InvalidArgument("actions", "is empty; send at least one action")
    ids = [_id(a.episode_id, f"actions[{i}].episode_id") for i, a in enumerate(req.actions)]
    if len(set(ids)) != len(ids):
        raise InvalidArgument("actions", "names an episode twice; one action per episode per step")
    return [(eid, _text(a.text, f"actions[{i}].text")) for i, (eid, a) in enumerate(zip(ids, req.actions))]


def reset_to_proto(name: str, ids: list[str], first: list[str]) -> pb.ResetResponse:
    return pb.ResetResponse(environment=name, observations=[pb.Observation(episode_id=i, text=t)
                                                            for i, t in zip(ids, first)])


def step_to_proto(ids: list[str], transitions: list[Transition]) -> pb.StepResponse:
    return pb.StepResponse(transitions=[pb.Transition(episode_id=i, observation=t.observation, reward=t.reward,
                                                      done=t.done, info={k: float(v) for k, v in t.info.items()})
                                        for i, t in zip(ids, transitions)])
