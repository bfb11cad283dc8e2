"""Flow registry: built-in names, or a user's class by ``package.module:Class`` / ``path/to/file.py:Class``."""

from __future__ import annotations

from typing import Callable

from alignmesh.services.common.errors import ConfigError

FLOWS: dict[str, Callable[[], object]] = {}


def register(name: str):
    def deco(cls):
        FLOWS[name] = cls
        return cls
    return deco


def _builtins() -> None:
    from alignmesh.coordinator.flows.dpo import DPO
    from alignmesh.coordinator.flows.grpo import GRPO
    from alignmesh.coordinator.flows.online_dpo import OnlineDPO
    from alignmesh.coordinator.flows.ppo import PPO
    from alignmesh.coordinator.flows.reward_model import RewardModel
    from alignmesh.coordinator.flows.reinforce_pp import ReinforcePP
    from alignmesh.coordinator.flows.rloo import RLOO
    from alignmesh.coordinator.flows.sft import SFT

    for name, cls in (("grpo", GRPO), ("sft", SFT), ("rloo", RLOO), ("reinforce_pp", ReinforcePP),
                      ("online_dpo", OnlineDPO), ("dpo", DPO), ("ppo", PPO), ("reward_model", RewardModel)):
        FLOWS.setdefault(name, cls)


def resolve(name: str):
    """Return the flow class for ``algorithm``; errors name the field."""
    _builtins()
    if name in FLOWS:
        return FLOWS[name]
    if ":" in name:
        from alignmesh.services.reward.registry import load_callable

        try:
            cls = load_callable(name)
        except ConfigError as exc:
            raise ConfigError(f"algorithm: {exc}") from None
        if not hasattr(cls, "run") or not hasattr(cls, "Params"):
            raise ConfigError(f"algorithm: {name} must be a class with a Params dataclass and async run(ctx)")
        return cls
    raise ConfigError(f"algorithm: unknown algorithm {name!r}; built in: {sorted(FLOWS)}, or give "
                      f"'package.module:FlowClass' / 'path/to/file.py:FlowClass'")
