"""The math reward: final answers verified the way math RL recipes do (math-verify), GSM8K's `#### x` gold
answers, in a worker thread (where math-verify's signal timeouts cannot run), with our own time limit."""

from __future__ import annotations

import threading
import time

import pytest

from alignmesh.services.reward.rules import gold_answer, math_verify
from alignmesh.services.reward.timeout import within

pytest.importorskip("math_verify")


@pytest.mark.parametrize("completion, answer, score", [
    ("Adding them, the answer is $\\boxed{\\frac{1}{2}}$.", "0.5", 1.0),
    ("So she has 72 clips.", "Natalia sold 48/2 = 24 clips in May.\n#### 72", 1.0),
    ("So she has 71 clips.", "#### 72", 0.0),
    ("The roots give $\\boxed{x = 3}$", "3", 1.0),
    ("$\\boxed{\\sqrt{8}}$", "2\\sqrt{2}", 1.0),
    ("I do not know.", "7", 0.0),
])
def test_final_answers_are_verified_in_a_worker_thread(completion, answer, score):
    out = []
    worker = threading.Thread(target=lambda: out.append(math_verify("q", completion, {"answer": answer})))
    worker.start()
    worker.join(30)
    assert out == [score]


def test_gold_answers_in_gsm8k_form():
    assert gold_answer("She earns 12 * 5 = 60.\n#### 60") == "60" and gold_answer(" 42 ") == "42"


def test_the_time_limit_interrupts_pure_python_work_in_a_thread():
    result = []

    def spin() -> None:
        try:
            within(0.3, lambda: [None for _ in iter(int, 1)])
        except TimeoutError:
            result.append("timed out")

    start = time.monotonic()
    worker = threading.Thread(target=spin)
    worker.start()
    worker.join(10)
    assert result == ["timed out"] and time.monotonic() - start < 3
    assert within(5.0, lambda: 41 + 1) == 42  # no stray exception after a quick call
    time.sleep(0.1)
