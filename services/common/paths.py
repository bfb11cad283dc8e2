"""Paths that arrive in requests and jobs are confined: resolved (``~``, ``..``, symlinks) and required to lie under
one of the directories the operator gave the cluster (its runs directory, its model and cache directories, and
``security.path_roots``). Anything else is PERMISSION_DENIED naming the setting that would allow it."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from alignmesh.services.common.errors import InvalidArgument, PermissionDenied
from alignmesh.services.common.settings import DEFAULT_MODEL, ClusterConfig


class PathPolicy:
    def __init__(self, roots: Iterable[str | Path]):
        self.roots = sorted({Path(r).expanduser().resolve() for r in roots})

    def check(self, field: str, path: str | Path) -> Path:
        """The resolved path, if it lies under a root; else PermissionDenied naming ``field``."""
        if not str(path) or "\x00" in str(path):
            raise InvalidArgument(field, "must be a path (non-empty, no NUL bytes)")
        try:
            resolved = Path(path).expanduser().resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # a loop of symlinks, a ~user that does not exist
            raise InvalidArgument(field, f"{path!r} cannot be resolved: {exc}") from None
        if any(resolved == root or resolved.is_relative_to(root) for root in self.roots):
            return resolved
        raise PermissionDenied(f"{field}: {path} is outside the directories this cluster may read and write "
                               f"({[str(r) for r in self.roots]}); ask its operator to add a directory to "
                               f"security.path_roots")


def path_policy(cfg: ClusterConfig) -> PathPolicy:
    roots = [cfg.coordinator.runs_dir, cfg.cache_dir, *cfg.security.path_roots]
    if cfg.model != DEFAULT_MODEL:
        roots.append(cfg.model)
    return PathPolicy(roots)
