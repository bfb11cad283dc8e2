"""The flow registry: built-in flows register themselves (``@FLOWS.register("grpo")`` beside their class); a user's
flow is named ``package.module:Class`` or ``path/to/file.py:Class`` in the job's ``algorithm``, and loads only from
the directories and module prefixes the operator lists (``coordinator.flow_dirs``, ``coordinator.flow_modules``)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from alignmesh.services.common.errors import ConfigError, PermissionDenied
from alignmesh.services.common.registry import Registry, load_callable

_BUILTIN = {name: f"alignmesh.coordinator.flows.{module}" for name, module in (
    ("grpo", "grpo"), ("sft", "sft"), ("rloo", "rloo"), ("reinforce_pp", "reinforce_pp"),
    ("online_dpo", "online_dpo"), ("dpo", "dpo"), ("ppo", "ppo"), ("reward_model", "reward_model"))}
FLOWS: Registry[type] = Registry("algorithm", "algorithm", _BUILTIN)


def check_allowed(ref: str, flow_dirs: Sequence[str], flow_modules: Sequence[str]) -> None:
    """PermissionDenied unless the code ``ref`` names lies in an allowed directory or module (checked before
    anything is imported; symlinks and ``..`` resolved first)."""
    module = ref.rpartition(":")[0]
    if module.endswith(".py"):
        path = Path(module).expanduser().resolve()
        roots = [Path(d).expanduser().resolve() for d in flow_dirs]
        if not any(path.is_relative_to(root) for root in roots):
            raise PermissionDenied(f"algorithm: {module} is outside the flow directories this cluster allows "
                                   f"(coordinator.flow_dirs: {[str(r) for r in roots]}); ask its operator to add the "
                                   f"directory there")
    elif not any(module == m or module.startswith(m + ".") for m in flow_modules):
        raise PermissionDenied(f"algorithm: module {module!r} is not one this cluster allows "
                               f"(coordinator.flow_modules: {list(flow_modules)}); ask its operator to add it there")


def resolve(name: str, flow_dirs: Sequence[str] = (), flow_modules: Sequence[str] = ()):
    """Return the flow class for ``algorithm``; errors name the field. User flows only from the allowed places."""
    if name in FLOWS or ":" not in name:
        if name not in FLOWS:
            raise ConfigError(f"algorithm: unknown algorithm {name!r}; built in: {FLOWS.names()}, or give "
                              f"'package.module:FlowClass' / 'path/to/file.py:FlowClass'")
        return FLOWS.get(name)
    check_allowed(name, flow_dirs, flow_modules)
    try:
        cls = load_callable(name)
    except ConfigError as exc:
        raise ConfigError(f"algorithm: {exc}") from None
    if not hasattr(cls, "run") or not hasattr(cls, "Params"):
        raise ConfigError(f"algorithm: {name} must be a class with a Params dataclass and async run(ctx)")
    return cls
