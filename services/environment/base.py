"""What an environment is: ``reset`` starts an episode from a task and says what the model reads first; the
episode's ``step`` takes the text of one model turn and answers with a ``Transition``.

Built-in environments register in ``ENVIRONMENTS`` the way built-in rewards do; user environments are classes named
in the cluster config (``environment.environments: {name: "package.module:Class"}``), the operator's choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from alignmesh.services.common.registry import Registry


@dataclass
class Transition:
    observation: str = ""  # what the model reads next (a tool's result); ignored once done
    reward: float = 0.0
    done: bool = False
    info: dict[str, float] = field(default_factory=dict)  # numeric facts, averaged into the job's metrics


class Episode(Protocol):
    def step(self, action: str) -> Transition:
        """Apply the text of one model turn (its end-of-turn token removed)."""
        ...


class Environment(Protocol):
    def reset(self, prompt: str, metadata: dict[str, str], seed: int) -> tuple[Episode, str]:
        """A new episode of the task ``prompt`` (``metadata``: the example's answer and the like) and the text the
        model reads first. Deterministic in (prompt, metadata, seed): an episode can be replayed elsewhere."""
        ...


ENVIRONMENTS: Registry[type] = Registry("environment", "environment.environments",
                                        builtins={"calculator": "alignmesh.services.environment.calculator"})
