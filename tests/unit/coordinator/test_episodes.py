"""Episodes as training rows: the model's turns trained, the environment's answers only read; demonstrations for
the warm start masked the same way."""

from __future__ import annotations

import pytest
import torch

from alignmesh.coordinator.config import parse_job_config
from alignmesh.coordinator.data import Example, calculator_splits
from alignmesh.coordinator.episodes import Episode, as_rollouts, summary
from alignmesh.coordinator.flows.base import Control, FlowContext
from alignmesh.services.common.errors import ConfigError
from alignmesh.services.models.light_tokenizer import load_light_tokenizer


def context(tok, text: str = "") -> FlowContext:
    return FlowContext(parse_job_config(text), None, None, None, None, None, tok, None, None, None,
                       lambda kind, payload: None, Control())


def test_episodes_become_rows_with_the_model_tokens_in_the_loss(tiny_model_dir):
    tok = load_light_tokenizer(tiny_model_dir)
    a = Episode("a", [1, 5, 6], tokens=[7, 8, 2, 9, 9, 4, 2], sampled=[1, 1, 1, 0, 0, 1, 1],
                logprobs=[-0.1, -0.2, -0.3, 0, 0, -0.4, -0.5], turns=[[7, 8, 2], [4, 2]], reward=1.0, end="done",
                version=3, info={"tool_calls": 1.0})
    b = Episode("b", [1, 5], tokens=[4, 2], sampled=[1, 1], logprobs=[-1.0, -2.0], turns=[[4, 2]], end="done",
                version=4, info={"tool_calls": 0.0})
    out = as_rollouts([a, b], pad=0)
    assert out.lengths.tolist() == [7, 2] and out.versions.tolist() == [3, 4]
    batch = context(tok).rollout_batch(out.prompt_ids[::1], out, 1)
    assert batch.input_ids.tolist() == [[1, 5, 6, 7, 8, 2, 9, 9, 4, 2], [1, 5, 4, 2, 0, 0, 0, 0, 0, 0]]
    assert batch.loss_mask.tolist() == [[0, 0, 0, 1, 1, 1, 0, 0, 1, 1], [0, 0, 1, 1, 0, 0, 0, 0, 0, 0]]
    assert batch.behavior_logprobs[0, 3:].tolist() == pytest.approx([-0.1, -0.2, -0.3, 0, 0, -0.4, -0.5])
    assert summary([a, b]) == {"episodes": 2.0, "turns": 3.0, "truncated": 0.0, "tool_calls": 1.0}


def test_a_demonstration_trains_the_model_turns_only(tiny_model_dir):
    tok = load_light_tokenizer(tiny_model_dir)
    ctx = context(tok)
    traced = Example("12*34=", "408", ("(12*34)", "=408 ", "408"))
    batch = ctx.demonstrations([traced, Example("1*1=", "1")])
    row = batch.input_ids[0].tolist()
    assert tok.decode(row, skip_special_tokens=False).replace("<pad>", "") == "<s>12*34=(12*34)</s>=408 408</s>"
    trained = tok.decode([t for t, m in zip(row, batch.loss_mask[0].tolist()) if m], skip_special_tokens=False)
    assert trained == "(12*34)</s>408</s>"
    assert tok.decode([t for t, m in zip(batch.input_ids[1].tolist(), batch.loss_mask[1].tolist()) if m],
                      skip_special_tokens=False) == "1</s>"
    # <s>12*34= is 7 tokens, then 17 of trace; <s>1*1= is 5, then 1</s>
    assert torch.equal(batch.attention_mask.sum(1), torch.tensor([7 + 17, 5 + 2]))


def test_the_calculator_task_and_its_traces():
    s = calculator_splits(seed=0, tool_traces=0.25)
    assert len(s.test) == 500 and len(s.dev) == 200 and len(s.train) == 8100 - 700
    share = sum(bool(e.trace) for e in s.train) / len(s.train)
    assert 0.22 < share < 0.28
    e = next(e for e in s.train if e.trace)
    a, b = e.prompt[:-1].split("*")
    assert e.trace == (f"({a}*{b})", f"={int(a) * int(b)} ", str(int(a) * int(b))) and e.answer == e.trace[2]
    assert not any(x.trace for x in s.test)


def test_an_episode_job_needs_an_environment_service_and_an_episode_flow(tiny_model_dir):
    from alignmesh.coordinator.jobs import validate
    from alignmesh.services.common.settings import ClusterConfig

    job = "environment: {name: calculator}\ndataset: {kind: calculator}\n"
    cluster = ClusterConfig(endpoints={"trainer": ["127.0.0.1:1"]})
    with pytest.raises(ConfigError, match="runs no environment service"):
        validate(job, cluster)
    cluster.endpoints["environment"] = ["127.0.0.1:2"]
    assert validate(job, cluster).environment.name == "calculator"
    with pytest.raises(ConfigError, match="the dpo flow trains on single completions"):
        validate("algorithm: dpo\n" + job, cluster)
    with pytest.raises(ConfigError, match="environment.max_turns: must be in"):
        parse_job_config("environment: {max_turns: 0}\n")
