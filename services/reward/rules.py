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
