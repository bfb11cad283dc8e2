"""The flow registry: built-in flows register themselves (``@FLOWS.register("grpo")`` beside their class); a user's
flow is named ``package.module:Class`` or ``path/to/file.py:Class`` in the job's ``algorithm``."""

from __future__ import annotations

from alignmesh.services.common.errors import ConfigError
from alignmesh.services.common.registry import Registry, load_callable

_BUILTIN = {name: f"alignmesh.coordinator.flows.{module}" for name, module in (
    ("grpo", "grpo"), ("sft", "sft"), ("rloo", "rloo"), ("reinforce_pp", "reinforce_pp"),
    ("online_dpo", "online_dpo"), ("dpo", "dpo"), ("ppo", "ppo"), ("reward_model", "reward_model"))}
FLOWS: Registry[type] = Registry("algorithm", "algorithm", _BUILTIN)


def resolve(name: str):
    """Return the flow class for ``algorithm``; errors name the field."""
    if name in FLOWS or ":" not in name:
        if name not in FLOWS:
            raise ConfigError(f"algorithm: unknown algorithm {name!r}; built in: {FLOWS.names()}, or give "
                              f"'package.module:FlowClass' / 'path/to/file.py:FlowClass'")
        return FLOWS.get(name)
    try:
        cls = load_callable(name)
    except ConfigError as exc:
        raise ConfigError(f"algorithm: {exc}") from None
    if not hasattr(cls, "run") or not hasattr(cls, "Params"):
        raise ConfigError(f"algorithm: {name} must be a class with a Params dataclass and async run(ctx)")
    return cls
