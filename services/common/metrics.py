"""Prometheus metrics shared by every role: per-RPC count, latency and errors, on a /metrics port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPC_TOTAL = Counter("alignmesh_rpc_total", "RPCs handled, by final status code",
                    ["role", "method", "code"])
RPC_ERRORS = Counter("alignmesh_rpc_errors_total", "RPCs that ended with a non-OK status",
                     ["role", "method", "code"])
RPC_LATENCY = Histogram("alignmesh_rpc_latency_seconds", "RPC handling time", ["role", "method"],
                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
IN_FLIGHT = Gauge("alignmesh_rpc_in_flight", "RPCs being handled now", ["role"])
SERVING = Gauge("alignmesh_serving", "1 while the service reports SERVING", ["role"])
WEIGHT_VERSION = Gauge("alignmesh_weight_version", "Weight version the role serves or trains", ["role"])


def record_rpc(role: str, method: str, code: str, seconds: float) -> None:
    """One finished call, whichever road it came by (gRPC or the same-host socket)."""
    RPC_TOTAL.labels(role, method, code).inc()
    RPC_LATENCY.labels(role, method).observe(seconds)
    if code != "OK":
        RPC_ERRORS.labels(role, method, code).inc()


def start_metrics_server(port: int, host: str = "127.0.0.1") -> int:
    """Serve /metrics on ``host`` (the service's own address: loopback unless it serves beyond); ``port`` 0 picks
    a free port. Returns the bound port."""
    server, _thread = start_http_server(port, addr=host)
    return server.server_address[1]
