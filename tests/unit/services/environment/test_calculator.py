"""The calculator environment: its expression parser (never Python's eval) and its episodes."""

from __future__ import annotations

import pytest

from alignmesh.services.environment.calculator import Calculator, ExpressionError, evaluate


@pytest.mark.parametrize("text, value", [("12*34", 408), ("1+2*3", 7), ("(1+2)*3", 9), ("10-4-3", 3),
                                         ("-5*2", -10), (" 7 * ( 8 - 2 ) ", 42), ("99*99", 9801)])
def test_arithmetic_with_the_usual_precedence(text, value):
    assert evaluate(text) == value


@pytest.mark.parametrize("text", ["", "1+", "(1+2", "1+2)", "2**3", "1/2", "__import__('os')", "a*b", "1 2",
                                  "9" * 33, "999999*999999*999999"])
def test_anything_else_is_refused(text):
    with pytest.raises(ExpressionError):
        evaluate(text)


def test_an_episode_calls_the_tool_then_answers():
    episode, first = Calculator().reset("12*34=", {"answer": "408"}, seed=0)
    assert first == "12*34="
    call = episode.step("(12*34)")
    assert (call.observation, call.reward, call.done) == ("=408 ", 0.0, False)
    answer = episode.step(" 408")
    assert (answer.reward, answer.done, answer.info["tool_calls"], answer.info["tool_used"]) == (1.0, True, 1.0, 1.0)


def test_a_direct_wrong_answer_and_a_bad_call_end_with_nothing():
    wrong, _ = Calculator().reset("12*34=", {"answer": "408"}, seed=0)
    t = wrong.step("407")
    assert (t.reward, t.done, t.info["tool_used"]) == (0.0, True, 0.0)
    bad, _ = Calculator().reset("12*34=", {"answer": "408"}, seed=0)
    t = bad.step("(12*)")
    assert (t.reward, t.done, t.info["valid_calls"]) == (0.0, True, 0.0)


def test_calls_are_bounded():
    episode, _ = Calculator().reset("1*1=", {"answer": "1"}, seed=0)
    for _ in range(4):
        assert not episode.step("(1*1)").done
    assert episode.step("(1*1)").done
