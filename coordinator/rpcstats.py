"""Accounting of the experience that travels over RPC: payload bytes and the time the transfer costs.

The transfer time of a call is its wall time at the coordinator minus the time the server spent in its handler
(the server reports that in the ``alignmesh-handler-us`` trailer), so it holds protobuf encoding and decoding on
both sides, the loopback or network hop and gRPC's own queueing — everything but the work itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alignmesh.services.common.interceptors import HANDLER_TRAILER


@dataclass
class Tally:
    calls: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    wall_s: float = 0.0
    handler_s: float = 0.0

    @property
    def transfer_s(self) -> float:
        return max(0.0, self.wall_s - self.handler_s)


@dataclass
class RpcLedger:
    """Per-role tallies since the last ``reset`` (the flow context resets it at every step)."""

    roles: dict[str, Tally] = field(default_factory=dict)

    def record(self, role: str, bytes_out: int, bytes_in: int, wall_s: float, handler_s: float) -> None:
        t = self.roles.setdefault(role, Tally())
        t.calls += 1
        t.bytes_out += bytes_out
        t.bytes_in += bytes_in
        t.wall_s += wall_s
        t.handler_s += min(handler_s, wall_s)

    def reset(self) -> None:
        self.roles = {}

    def metrics(self) -> dict[str, float]:
        """``rpc_bytes``/``rpc_ms`` in total and per role (``rpc_bytes_rollout``, ``rpc_ms_rollout``, …)."""
        out = {"rpc_bytes": 0.0, "rpc_ms": 0.0, "rpc_calls": 0.0}
        for role, t in sorted(self.roles.items()):
            out[f"rpc_bytes_{role}"] = float(t.bytes_out + t.bytes_in)
            out[f"rpc_ms_{role}"] = t.transfer_s * 1000
            out["rpc_bytes"] += t.bytes_out + t.bytes_in
            out["rpc_ms"] += t.transfer_s * 1000
            out["rpc_calls"] += t.calls
        return out


def handler_seconds(trailing_metadata) -> float:
    """The server's handler time from a call's trailing metadata; 0 when the server did not report it."""
    for key, value in trailing_metadata or ():
        if key == HANDLER_TRAILER:
            try:
                return int(value) / 1e6
            except ValueError:
                return 0.0
    return 0.0
