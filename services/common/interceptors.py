"""Server interceptors: domain errors -> status codes, metrics, bearer-token auth."""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any, Awaitable, Callable

import grpc

from alignmesh.services.common import metrics
from alignmesh.services.common.errors import AlignmeshError

log = logging.getLogger("alignmesh.rpc")
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)  # liveness probes carry no credentials; reflection does need them
HANDLER_TRAILER = "alignmesh-handler-us"  # server time in the handler, microseconds (see coordinator.rpcstats)


def _wrap(handler: grpc.RpcMethodHandler, unary: Callable, stream: Callable) -> grpc.RpcMethodHandler:
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), handler.request_deserializer,
                                                   handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), handler.request_deserializer,
                                                    handler.response_serializer)
    return handler  # client-streaming methods: none in our protos


def status_for(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    """The status code and details an exception becomes (domain errors by their code; anything else INTERNAL,
    logged with its stack). Both roads into a service use it: this interceptor and the same-host socket."""
    if isinstance(exc, AlignmeshError):
        return getattr(grpc.StatusCode, exc.code), str(exc)
    log.error("INTERNAL in %s", method, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"


async def _abort_for(exc: BaseException, context: grpc.aio.ServicerContext, method: str) -> None:
    await context.abort(*status_for(exc, method))


def _code_of(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """The one place where exceptions become status codes; INTERNAL is logged with its stack."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method

        def unary(fn):
            async def run(request, context):
                try:
                    return await fn(request, context)
                except (AlignmeshError, Exception) as exc:
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    await _abort_for(exc, context, method)
            return run

        def stream(fn):
            async def run(request, context):
                try:
                    async for item in fn(request, context):
                        yield item
                except Exception as exc:
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    await _abort_for(exc, context, method)
            return run

        return _wrap(handler, unary, stream)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every call; unary replies carry the handler's time in a trailer, plus ``trailers`` of
    their method (by method name: the local socket's address on the methods it serves)."""

    def __init__(self, role: str, trailers: dict[str, tuple[tuple[str, str], ...]] | None = None):
        self.role = role
        self.trailers = dict(trailers or {})

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit("/", 1)[-1]
        role, extra = self.role, self.trailers.get(method, ())

        def record(context, start: float, failed: bool) -> None:
            code = _code_of(context)
            if failed and code == "OK":
                code = "CANCELLED"
            metrics.record_rpc(role, method, code, time.perf_counter() - start)

        def unary(fn):
            async def run(request, context):
                start, failed = time.perf_counter(), True
                metrics.IN_FLIGHT.labels(role).inc()
                try:
                    out = await fn(request, context)
                    failed = False
                    # the coordinator subtracts this from its wall time to get the transfer cost of the call
                    context.set_trailing_metadata(((HANDLER_TRAILER, str(int((time.perf_counter() - start) * 1e6))),
                                                   *extra))
                    return out
                finally:
                    metrics.IN_FLIGHT.labels(role).dec()
                    record(context, start, failed)
            return run

        def stream(fn):
            async def run(request, context):
                start, failed = time.perf_counter(), True
                metrics.IN_FLIGHT.labels(role).inc()
                try:
                    async for item in fn(request, context):
                        yield item
                    failed = False
                finally:
                    metrics.IN_FLIGHT.labels(role).dec()
                    record(context, start, failed)
            return run

        return _wrap(handler, unary, stream)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>``; only health stays open (reflection would map the API)."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        if details.method.startswith(EXEMPT_PREFIXES):
            return await continuation(details)
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if isinstance(given, str):
            given = given.encode()
        handler = await continuation(details)
        if handler is None or hmac.compare_digest(given, self._expected):
            return handler
        return _deny_handler(handler)


DENIED = "missing or wrong bearer token (metadata 'authorization: Bearer <token>')"


def _deny_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` (unary or streaming) that refuses with UNAUTHENTICATED."""
    async def deny(request: Any, context: grpc.aio.ServicerContext) -> Awaitable[None]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)
        yield  # pragma: no cover  (abort raises)

    kinds = {(False, False): (grpc.unary_unary_rpc_method_handler, deny),
             (False, True): (grpc.unary_stream_rpc_method_handler, deny_stream),
             (True, False): (grpc.stream_unary_rpc_method_handler, deny),
             (True, True): (grpc.stream_stream_rpc_method_handler, deny_stream)}
    make, fn = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(fn, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
