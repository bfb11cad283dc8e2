"""Where a local cluster started by ``alignmesh up`` says it is (``<state_dir>/cluster.json``), read without
importing the server side."""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_COORDINATOR = "127.0.0.1:50051"


def state_file(state_dir: str | Path) -> Path:
    return Path(state_dir).expanduser().resolve() / "cluster.json"


def read_state(state_dir: str | Path) -> dict | None:
    path = state_file(state_dir)
    return json.loads(path.read_text()) if path.exists() else None


def local_coordinator(state_dir: str | Path) -> str | None:
    """host:port of the local cluster's coordinator, or None when no local cluster is running."""
    state = read_state(state_dir) or {}
    members = [m for m in state.get("members", []) if m["role"] == "coordinator"]
    return f"{state['host']}:{members[0]['port']}" if members else None
