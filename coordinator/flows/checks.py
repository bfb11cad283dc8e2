"""Checks for flow parameters, run at submit (``from_dict`` calls each ``Params.validate``): a bad value is
INVALID_ARGUMENT naming ``params.<field>`` before anything is written, never an exception mid-run."""

from __future__ import annotations

from alignmesh.services.common.errors import ConfigError


def positive(where: str, params, *names: str) -> None:
    for name in names:
        value = getattr(params, name)
        if not value > 0:
            raise ConfigError(f"{where}.{name}: must be > 0, got {value}")


def at_least(where: str, params, low: float, *names: str) -> None:
    for name in names:
        value = getattr(params, name)
        if not value >= low:
            raise ConfigError(f"{where}.{name}: must be >= {low}, got {value}")


def within(where: str, params, name: str, low: float, high: float) -> None:
    value = getattr(params, name)
    if not low <= value <= high:
        raise ConfigError(f"{where}.{name}: must be in [{low}, {high}], got {value}")


def one_of(where: str, params, name: str, options: tuple[str, ...]) -> None:
    value = getattr(params, name)
    if value not in options:
        raise ConfigError(f"{where}.{name}: must be one of {list(options)}, got {value!r}")


def off_policy(where: str, params) -> None:
    """``off_policy`` / ``is_cap`` of a flow that may run ahead of its trainer (``max_staleness``)."""
    one_of(where, params, "off_policy", ("none", "tis", "decoupled", "sequence_tis"))
    within(where, params, "is_cap", 1.0, 1e6)
