"""The environment service's episode table and request checks: bounded, idle episodes forgotten, errors that name
the field and the fix."""

from __future__ import annotations

import time

import pytest

from alignmesh.protos.environment.v1 import environment_pb2 as pb
from alignmesh.services.common.errors import ConfigError, InvalidArgument, NotFound, ResourceExhausted
from alignmesh.services.environment import convert
from alignmesh.services.environment.table import Environments, EpisodeTable

START = ("e1", "12*34=", {"answer": "408"}, 0)


def table(**kw) -> EpisodeTable:
    return EpisodeTable(Environments("calculator"), **kw)


def test_reset_step_close():
    t = table()
    assert t.reset("", [START]) == ("calculator", ["12*34="])
    assert t.reset("calculator", [START]) == ("calculator", ["12*34="])  # a repeated Reset: the same episode
    assert [x.observation for x in t.step([("e1", "(12*34)")])] == ["=408 "]
    assert [x.reward for x in t.step([("e1", "408")])] == [1.0]
    with pytest.raises(InvalidArgument, match="done; reset a new episode"):
        t.step([("e1", "408")])
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value("alignmesh_environment_live_episodes") == 1.0
    assert t.close(["e1", "unknown"]) == 1
    assert REGISTRY.get_sample_value("alignmesh_environment_live_episodes") == 0.0
    with pytest.raises(NotFound, match="not live here"):
        t.step([("e1", "408")])


def test_the_number_of_live_episodes_is_bounded_and_idle_ones_are_forgotten():
    t = table(max_episodes=2, idle_s=0.2)
    t.reset("", [("a", "1*1=", {"answer": "1"}, 0), ("b", "1*1=", {"answer": "1"}, 0)])
    with pytest.raises(ResourceExhausted, match="environment.max_episodes 2"):
        t.reset("", [("c", "1*1=", {"answer": "1"}, 0)])
    time.sleep(0.3)
    t.reset("", [("c", "1*1=", {"answer": "1"}, 0)])  # a and b were idle too long
    assert sorted(t.live) == ["c"]


def test_bad_requests_name_the_field():
    t = table()
    with pytest.raises(InvalidArgument, match="environment: unknown environment 'chess'"):
        t.reset("chess", [START])
    with pytest.raises(InvalidArgument, match=r"episodes\[0\].metadata: environment 'calculator' needs key 'answer'"):
        t.reset("", [("e", "1*1=", {}, 0)])
    with pytest.raises(InvalidArgument, match="episodes: is empty"):
        convert.starts_from_proto(pb.ResetRequest())
    with pytest.raises(InvalidArgument, match=r"episodes\[0\].episode_id: must be 1-128"):
        convert.starts_from_proto(pb.ResetRequest(episodes=[pb.EpisodeStart(episode_id="")]))
    with pytest.raises(InvalidArgument, match=r"actions\[0\].text: at most 65536 characters"):
        convert.actions_from_proto(pb.StepRequest(actions=[pb.Action(episode_id="a", text="x" * 65537)]))
    with pytest.raises(InvalidArgument, match=r"episodes\[0\].prompt: at most 65536 characters"):
        convert.starts_from_proto(pb.ResetRequest(episodes=[pb.EpisodeStart(episode_id="a", prompt="x" * 65537)]))
    with pytest.raises(InvalidArgument, match="names an episode twice"):
        convert.actions_from_proto(pb.StepRequest(actions=[pb.Action(episode_id="a"), pb.Action(episode_id="a")]))


def test_operator_environments_load_by_reference(tmp_path):
    (tmp_path / "mine.py").write_text(
        "from alignmesh.services.environment.base import Transition\n"
        "class Ep:\n    def step(self, action):\n        return Transition(reward=1.0, done=True)\n"
        "class Mine:\n    def reset(self, prompt, metadata, seed):\n        return Ep(), 'go'\n")
    envs = Environments("mine", {"mine": f"{tmp_path / 'mine.py'}:Mine"})
    t = EpisodeTable(envs)
    assert t.reset("", [("x", "p", {}, 0)]) == ("mine", ["go"])
    assert t.step([("x", "anything")])[0].reward == 1.0
    with pytest.raises(ConfigError, match="environment.default: 'nope' is not registered"):
        Environments("nope")
