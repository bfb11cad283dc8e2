"""Built-in rule rewards. A rule is ``fn(prompt, completion, metadata) -> float``."""

from __future__ import annotations

from typing import Callable

from alignmesh.services.common.registry import Registry

RuleFn = Callable[[str, str, dict], float]
RULES: Registry[RuleFn] = Registry("reward function", "reward.functions")


@RULES.register("exact_answer")
def exact_answer(prompt: str, completion: str, metadata: dict[str, str]) -> float:
    """1.0 when the completion (surrounding whitespace stripped) equals ``metadata['answer']``, else 0.0."""
    if "answer" not in metadata:
        raise KeyError("answer")
    return 1.0 if completion.strip() == metadata["answer"].strip() else 0.0


@RULES.register("addition_exact")
def addition_exact(prompt: str, completion: str, metadata: dict[str, str]) -> float:
    """The embedded task: ``a+b=`` must be completed by ``str(a+b)``. Uses the answer in metadata when given,
    else computes it from the prompt."""
    if "answer" in metadata:
        return exact_answer(prompt, completion, metadata)
    left = prompt.strip().rstrip("=")
    a, b = left.split("+")
    return 1.0 if completion.strip() == str(int(a) + int(b)) else 0.0



def extract_code(completion: str) -> str:
    """The program in a completion: the last fenced block (```python or ```), else the whole text."""
    blocks = completion.split("```")
    if len(blocks) >= 3:
        body = blocks[-2]
        first, _, rest = body.partition("\n")
        return rest if first.strip().lower() in ("python", "py", "python3", "") else body
    return completion


@RULES.register("code_tests")
def code_tests(prompt: str, completion: str, metadata: dict[str, str]) -> float:
    """1.0 when the completion's code followed by ``metadata['tests']`` (Python asserts) runs to exit 0 in the
    sandbox (``services/reward/sandbox.py``: time, memory, file, process and network limits), else 0.0."""
    from alignmesh.services.reward.sandbox import run_python

    if "tests" not in metadata:
        raise KeyError("tests")
    return 1.0 if run_python(extract_code(completion) + "\n\n" + metadata["tests"] + "\n").passed else 0.0


MATH_TIMEOUT_S = 5.0
MATH_TAIL_CHARS = 2000  # the final answer is at the end; sympy is not given more than this to parse


def gold_answer(answer: str) -> str:
    """GSM8K writes its reference solutions as reasoning then ``#### 42``: the part after the last ``####``."""
    return answer.rsplit("####", 1)[-1].strip() if "####" in answer else answer.strip()


@RULES.register("math_verify")
def math_verify(prompt: str, completion: str, metadata: dict[str, str]) -> float:
    """1.0 when the completion's final answer (``\\boxed{...}``, or the last number or expression) is
    mathematically equal to ``metadata['answer']`` (``#### x`` GSM8K answers understood), by HF ``math-verify``
    (the ``math`` extra), as math RL recipes score; else 0.0 (also when parsing takes over 5 s)."""
    try:
        from math_verify import parse, verify
    except ImportError:
        raise ValueError("the math_verify reward needs `pip install 'alignmesh[math]'` on the reward service") from None
    from alignmesh.services.reward.timeout import within

    if "answer" not in metadata:
        raise KeyError("answer")
    gold, tail = gold_answer(metadata["answer"]), completion[-MATH_TAIL_CHARS:]
    if "\\" in gold and "$" not in gold:  # a bare LaTeX gold answer (MATH style): parse it as math
        gold = f"${gold}$"

    def check() -> bool:  # math-verify's own timeouts use signals, which a worker thread cannot
        return verify(parse(gold, parsing_timeout=None), parse(tail, parsing_timeout=None), timeout_seconds=None)

    try:
        return 1.0 if within(MATH_TIMEOUT_S, check) else 0.0
    except TimeoutError:
        return 0.0
