"""The reward registry: rule functions by name or dotted path, and model scorers, behind one Protocol."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from alignmesh.services.common.errors import ConfigError, InvalidArgument
from alignmesh.services.reward.rules import BUILTIN

RuleFn = Callable[[str, str, dict], float]


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


def load_callable(ref: str) -> Callable:
    """``package.module:function`` or ``path/to/file.py:function``."""
    if ":" not in ref:
        raise ConfigError(f"{ref!r}: write it as 'package.module:function' or 'file.py:function'")
    module_ref, _, attr = ref.rpartition(":")
    try:
        if module_ref.endswith(".py"):
            path = Path(module_ref).expanduser().resolve()
            spec = importlib.util.spec_from_file_location(f"alignmesh_user_{path.stem}", path)
            if spec is None or not path.is_file():
                raise FileNotFoundError(path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_ref)
        return getattr(module, attr)
    except (ImportError, FileNotFoundError, AttributeError) as exc:
        raise ConfigError(f"{ref!r} cannot be loaded: {exc}") from None


class Registry:
    def __init__(self, default: str):
        self.scorers: dict[str, Scorer] = {name: RuleScorer(name, fn) for name, fn in BUILTIN.items()}
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
