"""The reward registry: rule functions by name or dotted path, and model scorers, behind one Protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from alignmesh.services.common.errors import ConfigError, InvalidArgument
from alignmesh.services.common.registry import load_callable
from alignmesh.services.reward.rules import RULES, RuleFn


@dataclass
class Item:
    prompt: str
    completion: str
    metadata: dict[str, str] = field(default_factory=dict)


class Scorer(Protocol):
    def score(self, items: list[Item]) -> list[float]: ...


class RuleScorer:
    def __init__(self, name: str, fn: RuleFn):
        self.name, self.fn = name, fn

    def score(self, items: list[Item]) -> list[float]:
        out = []
        for i, item in enumerate(items):
            try:
                out.append(float(self.fn(item.prompt, item.completion, item.metadata)))
            except KeyError as exc:
                raise InvalidArgument(f"items[{i}].metadata", f"reward {self.name!r} needs key {exc}") from None
            except ValueError as exc:
                raise InvalidArgument(f"items[{i}]", f"reward {self.name!r} cannot score it: {exc}") from None
        return out


class Registry:
    def __init__(self, default: str):
        self.scorers: dict[str, Scorer] = {name: RuleScorer(name, RULES.get(name))
                                              for name in RULES.names()}
        self.default = default

    def add_rule(self, name: str, ref: str) -> None:
        self.scorers[name] = RuleScorer(name, load_callable(ref))

    def add(self, name: str, scorer: Scorer) -> None:
        self.scorers[name] = scorer

    def get(self, name: str) -> tuple[str, Scorer]:
        name = name or self.default
        if name not in self.scorers:
            raise InvalidArgument("reward_fn", f"unknown reward {name!r}; registered: {sorted(self.scorers)}")
        return name, self.scorers[name]

    def check(self) -> None:
        if self.default not in self.scorers:
            raise ConfigError(f"reward.default: {self.default!r} is not registered; known: {sorted(self.scorers)}")
