import pytest

from alignmesh.services.common.errors import ConfigError, InvalidArgument
from alignmesh.services.reward.registry import Item, Registry
from alignmesh.services.reward.rules import addition_exact


def test_addition_rule():
    assert addition_exact("12+30=", " 42", {}) == 1.0
    assert addition_exact("12+30=", "43", {}) == 0.0
    assert addition_exact("12+30=", "7", {"answer": "7"}) == 1.0


def test_registry_scores_and_names_bad_input():
    reg = Registry("addition_exact")
    name, scorer = reg.get("")
    assert name == "addition_exact"
    assert scorer.score([Item("1+1=", "2"), Item("1+1=", "3")]) == [1.0, 0.0]
    with pytest.raises(InvalidArgument, match=r"reward_fn: unknown reward 'nope'"):
        reg.get("nope")
    _, exact = reg.get("exact_answer")
    with pytest.raises(InvalidArgument, match=r"items\[0\].metadata: reward 'exact_answer' needs key 'answer'"):
        exact.score([Item("q", "a")])


def test_rule_loaded_from_a_file_and_a_module(tmp_path):
    f = tmp_path / "rules.py"
    f.write_text("def length(prompt, completion, metadata):\n    return float(len(completion))\n")
    reg = Registry("length")
    reg.add_rule("length", f"{f}:length")
    reg.add_rule("exact", "alignmesh.services.reward.rules:exact_answer")
    reg.check()
    assert reg.get("")[1].score([Item("p", "abc")]) == [3.0]
    with pytest.raises(ConfigError, match="write it as 'package.module:function'"):
        reg.add_rule("x", "no_colon")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        reg.add_rule("x", "alignmesh.services.reward.rules:missing")
    with pytest.raises(ConfigError, match="reward.default: 'zzz' is not registered"):
        Registry("zzz").check()
