"""One registry for every extension point (flows, rollout and trainer backends, reward functions, losses), and
the loader for user code named as ``package.module:attr`` or ``path/to/file.py:attr``.

Built-in entries register themselves exactly as user entries do (``@REGISTRY.register("name")`` in their own
module); the registry only knows which module holds each built-in, and imports it on first use, so that choosing
one backend never imports another's dependencies. Torch-free: the client and every layer may use it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable, Generic, Iterable, TypeVar

from alignmesh.services.common.config import show
from alignmesh.services.common.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> entries of one kind. ``builtins`` maps a built-in name to the module that registers it."""

    def __init__(self, kind: str, field: str, builtins: dict[str, str] | None = None):
        self.kind, self.field = kind, field
        self.builtins = dict(builtins or {})
        self.entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None):
        """``REG.register("x", obj)``, or as a decorator ``@REG.register("x")``. Re-registering a name with a
        different entry is an error (two plugins claiming one name would otherwise race)."""
        if entry is None:
            return lambda obj: self.register(name, obj)
        known = self.entries.get(name)
        if known is not None and known is not entry and _qualname(known) != _qualname(entry):
            raise ConfigError(f"{self.field}: {self.kind} {name!r} is registered twice "
                              f"({_qualname(known)} and {_qualname(entry)}); rename one")
        self.entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry for ``name``; importing its built-in module on first use. Errors name the field and list
        what is known."""
        if name not in self.entries and name in self.builtins:
            importlib.import_module(self.builtins[name])
        if name not in self.entries:
            raise ConfigError(f"{self.field}: unknown {self.kind} {show(name)}; known: {self.names()}")
        return self.entries[name]

    def names(self) -> list[str]:
        return sorted(set(self.entries) | set(self.builtins))

    def __contains__(self, name: str) -> bool:
        return name in self.entries or name in self.builtins


def _qualname(obj) -> str:
    """Where an entry was defined: a function's or class's own name, else that of the callable it wraps."""
    if not hasattr(obj, "__qualname__"):
        inner = getattr(obj, "objective", None) or getattr(obj, "fn", None)
        obj = inner if inner is not None else type(obj)
    return f"{getattr(obj, '__module__', '?')}.{obj.__qualname__}"


def load_module(ref: str):
    """Import ``package.module`` or ``path/to/file.py`` (a file is imported once, under a stable name, so that
    dataclasses, pickling and a second load all see the same module)."""
    if ref.endswith(".py"):
        path = Path(ref).expanduser().resolve()
        name = f"alignmesh_user_{path.stem}"
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or not path.is_file():
            raise FileNotFoundError(path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(spec.name, None)
            raise
        return module
    return importlib.import_module(ref)


def load_callable(ref: str) -> Callable:
    """``package.module:attr`` or ``path/to/file.py:attr``; errors say how to write it."""
    if ":" not in ref:
        raise ConfigError(f"{ref!r}: write it as 'package.module:function' or 'file.py:function'")
    module_ref, _, attr = ref.rpartition(":")
    try:
        return getattr(load_module(module_ref), attr)
    except (ImportError, FileNotFoundError, AttributeError) as exc:
        raise ConfigError(f"{ref!r} cannot be loaded: {exc}") from None


def load_plugins(refs: Iterable[str], field: str) -> None:
    """Import each ``package.module`` / ``file.py`` so that its ``register`` lines run (user losses, flows)."""
    for i, ref in enumerate(refs):
        try:
            load_module(ref)
        except (ImportError, FileNotFoundError) as exc:
            raise ConfigError(f"{field}[{i}]: {ref!r} cannot be imported: {exc}") from None
