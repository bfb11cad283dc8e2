"""Run one role as a ``grpc.aio`` server: health, reflection, interceptors, /metrics, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from alignmesh.services.common import metrics
from alignmesh.services.common.errors import ConfigError
from alignmesh.services.common.interceptors import ErrorInterceptor, MetricsInterceptor, TokenAuthInterceptor
from alignmesh.services.common.local_socket import TRAILER, LocalSocketServer
from alignmesh.services.common.settings import SecurityConfig

log = logging.getLogger("alignmesh.server")

def grpc_options(security: SecurityConfig) -> list[tuple[str, int]]:
    """Server and channel options. Experience and generation batches can exceed gRPC's 4 MB default: the cap is
    ``security.max_message_mb`` (256 by default), both ways; a larger message is RESOURCE_EXHAUSTED."""
    limit = int(security.max_message_mb * 1024 * 1024)
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit),
            ("grpc.so_reuseport", 0)]


@dataclass
class ServeSpec:
    role: str
    host: str
    port: int
    metrics_port: int
    security: SecurityConfig
    grace_s: float = 10.0
    insecure: bool = False  # serve beyond loopback without authentication (an explicit choice)
    port_file: str | None = None  # written with host:port once bound (port 0: a port chosen at start)
    local_socket: bool = True  # offer same-host callers a Unix socket for the methods a role serves there


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_exposure(spec: ServeSpec) -> None:
    """A service reachable beyond loopback authenticates its callers, or was told explicitly not to."""
    if spec.host in LOOPBACK or spec.host.startswith("127.") or spec.insecure or spec.security.authenticates():
        return
    raise ConfigError(f"host: {spec.role} would listen on {spec.host}, beyond loopback, with no authentication; set "
                      f"security.token_file (or security.token, or security.tls with a ca for client certificates), "
                      f"or serve with --insecure on a network you trust")


def _credentials(security: SecurityConfig) -> grpc.ServerCredentials | None:
    if security.tls is None:
        return None
    key = Path(security.tls.key).read_bytes()
    cert = Path(security.tls.cert).read_bytes()
    ca = Path(security.tls.ca).read_bytes() if security.tls.ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def channel_credentials(security: SecurityConfig) -> grpc.ChannelCredentials | None:
    """What a cluster member presents when it calls another one: None on plaintext; with TLS it trusts ``ca``
    (else the system roots) and, since a ``ca`` makes servers require client certificates, presents its own."""
    if security.tls is None:
        return None
    tls = security.tls
    if tls.ca is None:
        return grpc.ssl_channel_credentials()
    return grpc.ssl_channel_credentials(root_certificates=Path(tls.ca).read_bytes(),
                                        private_key=Path(tls.key).read_bytes(),
                                        certificate_chain=Path(tls.cert).read_bytes())


def build_server(spec: ServeSpec, local: LocalSocketServer | None = None) -> grpc.aio.Server:
    trailers = {m: ((TRAILER, local.advertisement),) for m in local.methods} if local is not None else {}
    interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(spec.role, trailers)]
    token = spec.security.bearer()
    if token:
        interceptors.append(TokenAuthInterceptor(token))
    interceptors.append(ErrorInterceptor())
    return grpc.aio.server(interceptors=interceptors, options=grpc_options(spec.security))


def _local_socket(spec: ServeSpec, methods: dict | None) -> LocalSocketServer | None:
    """The Unix socket same-host callers may use instead of gRPC (``local_socket.py``), when the role has methods
    for it and the cluster allows it."""
    if not methods or not spec.local_socket:
        return None
    local = LocalSocketServer(spec.role, methods, int(spec.security.max_message_mb * 1024 * 1024))
    return local if local.start() else None


def _health_reporter(role: str, health, names: Sequence[str]) -> Callable[[bool], None]:
    """``report(serving)``: every service name of this server SERVING or NOT_SERVING (call on the event loop)."""
    def report(serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *names):
            asyncio.ensure_future(health.set(name, status))
        metrics.SERVING.labels(role).set(1 if serving else 0)
    return report


async def serve(spec: ServeSpec, register: Callable[[grpc.aio.Server], Sequence[str]],
                on_stop: Callable[[], None] | None = None, lifecycle=None) -> None:
    """Register servicers (``register`` returns their full service names), serve until SIGTERM/SIGINT.

    On a signal: health reports NOT_SERVING, new calls are refused, in-flight calls get ``grace_s`` to finish.
    ``lifecycle`` (optional): ``started(port, metrics_port)`` once serving, ``await stopping()`` when a stop is
    requested.
    """
    check_exposure(spec)
    local = _local_socket(spec, getattr(register, "local_methods", None))
    server = build_server(spec, local)
    names = list(register(server))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection([*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                                         reflection.SERVICE_NAME], server)
    address = f"{spec.host}:{spec.port}"
    creds = _credentials(spec.security)
    try:
        bound = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"{spec.role}: cannot bind {address} (port already in use?)") from exc
    mport = metrics.start_metrics_server(spec.metrics_port, spec.host)
    await server.start()
    for name in ("", *names):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    metrics.SERVING.labels(spec.role).set(1)
    hook = getattr(register, "on_health", None)
    if hook is not None:  # a role that can lose a dependency (the coordinator's database) reports it
        hook(_health_reporter(spec.role, health, names))
    log.info("%s serving on %s:%d, metrics on :%d", spec.role, spec.host, bound, mport)
    if spec.port_file:  # e.g. for a container health check of a replica on a port chosen at start
        Path(spec.port_file).write_text(f"{'127.0.0.1' if spec.host in ('0.0.0.0', '::') else spec.host}:{bound}\n")
    if lifecycle is not None:
        lifecycle.started(bound, mport)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("%s: stop requested; NOT_SERVING, draining for up to %.0fs", spec.role, spec.grace_s)
    if local is not None:
        local.stop()
    await health.enter_graceful_shutdown()
    if lifecycle is not None:
        await lifecycle.stopping()
    metrics.SERVING.labels(spec.role).set(0)
    await server.stop(spec.grace_s)
    if on_stop is not None:
        on_stop()
