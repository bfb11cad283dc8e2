"""The built-in ``calculator`` environment: arithmetic that a small model cannot do in its head, with a calculator
it may call.

A turn that is an expression in parentheses, ``(12*34)``, is a call: the environment answers ``=408 `` and the
episode goes on. Any other turn is the final answer: reward 1.0 when it equals the task's answer, else 0.0, and
the episode ends. A call that is not arithmetic (or too long, or too large) ends the episode with reward 0.0.
The expression is parsed here (integers, ``+ - *``, parentheses), never evaluated as code.
"""

from __future__ import annotations

import re

from alignmesh.services.environment.base import ENVIRONMENTS, Transition

MAX_EXPRESSION = 32  # characters inside the parentheses
MAX_VALUE = 10 ** 12  # a result (or intermediate) beyond this is refused
MAX_CALLS = 4
TOKEN = re.compile(r"\s*(\d+|[-+*()])")


class ExpressionError(ValueError):
    pass


def evaluate(text: str) -> int:
    """The value of an integer expression of ``+ - *`` and parentheses (usual precedence). Raises
    ExpressionError for anything else."""
    if len(text) > MAX_EXPRESSION:
        raise ExpressionError(f"longer than {MAX_EXPRESSION} characters")
    tokens, pos = [], 0
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if m is None:
            if text[pos:].strip() == "":
                break
            raise ExpressionError(f"unexpected {text[pos]!r}")
        tokens.append(m.group(1))
        pos = m.end()
    value, rest = _sum(tokens)
    if rest:
        raise ExpressionError(f"unexpected {rest[0]!r}")
    return value


def _bounded(value: int) -> int:
    if abs(value) > MAX_VALUE:
        raise ExpressionError("result too large")
    return value


def _sum(tokens: list[str]) -> tuple[int, list[str]]:
    value, tokens = _product(tokens)
    while tokens and tokens[0] in "+-":
        op, (right, tokens) = tokens[0], _product(tokens[1:])
        value = _bounded(value + right if op == "+" else value - right)
    return value, tokens


def _product(tokens: list[str]) -> tuple[int, list[str]]:
    value, tokens = _atom(tokens)
    while tokens and tokens[0] == "*":
        right, tokens = _atom(tokens[1:])
        value = _bounded(value * right)
    return value, tokens


def _atom(tokens: list[str]) -> tuple[int, list[str]]:
    if not tokens:
        raise ExpressionError("ends early")
    head, rest = tokens[0], tokens[1:]
    if head == "-":
        value, rest = _atom(rest)
        return -value, rest
    if head == "(":
        value, rest = _sum(rest)
        if not rest or rest[0] != ")":
            raise ExpressionError("unbalanced parentheses")
        return value, rest[1:]
    if head.isdigit():
        return _bounded(int(head)), rest
    raise ExpressionError(f"unexpected {head!r}")


class CalculatorEpisode:
    def __init__(self, answer: str):
        self.answer, self.calls = answer.strip(), 0

    def step(self, action: str) -> Transition:
        text = action.strip()
        if text.startswith("(") and text.endswith(")"):
            self.calls += 1
            try:
                if self.calls > MAX_CALLS:
                    raise ExpressionError(f"more than {MAX_CALLS} calls")
                result = evaluate(text[1:-1])
            except ExpressionError:
                return Transition(reward=0.0, done=True, info=self._info(valid=0.0))
            return Transition(observation=f"={result} ", info=self._info())
        return Transition(reward=float(text == self.answer), done=True, info=self._info())

    def _info(self, valid: float = 1.0) -> dict[str, float]:
        return {"tool_calls": float(self.calls), "tool_used": float(self.calls > 0), "valid_calls": valid}


@ENVIRONMENTS.register("calculator")
class Calculator:
    """Tasks are the dataset's examples: the prompt is shown as it is; ``metadata['answer']`` is the answer."""

    def reset(self, prompt: str, metadata: dict[str, str], seed: int) -> tuple[CalculatorEpisode, str]:
        if "answer" not in metadata:
            raise KeyError("answer")
        return CalculatorEpisode(metadata["answer"]), prompt
