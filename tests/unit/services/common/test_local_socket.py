"""The same-host socket transport: real Unix sockets, a real server thread, the asyncio client."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import time

import grpc
import pytest

from alignmesh.services.common import metrics
from alignmesh.services.common.errors import InvalidArgument
from alignmesh.services.common.local_socket import MAGIC, REQUEST, LocalSocketClient, LocalSocketServer


def _echo(payload: bytes, deadline) -> bytes:
    return payload[::-1]


def _bad(payload: bytes, deadline) -> bytes:
    raise InvalidArgument("prompt_ids", "token 99 is outside the vocabulary (size 20)")


def _broken(payload: bytes, deadline) -> bytes:
    raise KeyError("boom")


def _slow(payload: bytes, deadline) -> bytes:
    time.sleep(1.0)
    return b"late"


@pytest.fixture
def server():
    methods = {"Echo": _echo, "Bad": _bad, "Broken": _broken, "Slow": _slow}
    s = LocalSocketServer("testrole", methods, max_bytes=1024)
    assert s.start()
    yield s
    s.stop()


def _run(coro):
    return asyncio.run(coro)


def _total(method: str, code: str) -> float:
    return metrics.RPC_TOTAL.labels("testrole", method, code)._value.get()


def test_round_trip_returns_the_reply_the_handler_time_and_counts_the_call(server):
    before = _total("Echo", "OK")

    async def go():
        client = await LocalSocketClient.open(server.advertisement, ("Echo",))
        out = [await client.call("Echo", b"abc%d" % i, 5.0) for i in range(3)]
        await client.close()
        return out

    out = _run(go())
    assert [body for body, _ in out] == [b"0cba", b"1cba", b"2cba"]
    assert all(0 <= handler < 1.0 for _, handler in out)
    assert _total("Echo", "OK") == before + 3
    assert server.name.startswith("@alignmesh-testrole-")  # abstract: no file to leak or to guard


@pytest.mark.parametrize("method,code,text", [
    ("Bad", grpc.StatusCode.INVALID_ARGUMENT, "prompt_ids: token 99 is outside the vocabulary"),
    ("Broken", grpc.StatusCode.INTERNAL, "KeyError"),
    ("Nope", grpc.StatusCode.UNIMPLEMENTED, "'Nope' is not served"),
])
def test_errors_arrive_as_the_status_a_grpc_call_would_raise(server, method, code, text):
    async def go():
        client = await LocalSocketClient.open(server.advertisement, (method,))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.call(method, b"x", 5.0)
        body, _ = await client.call("Echo", b"ok", 5.0)  # the connection is still good
        await client.close()
        return err.value, body

    err, body = _run(go())
    assert err.code() == code and text in err.details()
    assert body == b"ko"


def test_a_deadline_ends_the_call_in_time_and_the_next_call_is_not_handed_the_late_reply(server):
    async def go():
        client = await LocalSocketClient.open(server.advertisement, ("Slow", "Echo"))
        start = time.perf_counter()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.call("Slow", b"", 0.2)
        waited = time.perf_counter() - start
        body, _ = await client.call("Echo", b"next", 5.0)
        await client.close()
        return err.value, waited, body

    err, waited, body = _run(go())
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert waited < 0.8
    assert body == b"txen"


def test_a_stopped_server_is_a_connection_error_and_frees_its_name(server):
    async def go():
        client = await LocalSocketClient.open(server.advertisement, ("Echo",))
        await client.call("Echo", b"a", 5.0)
        server.stop()
        with pytest.raises(ConnectionError):  # the kept connection: the server says stopping or hangs up
            try:
                await client.call("Echo", b"b", 5.0)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                raise ConnectionError("stopping") from exc
        with pytest.raises(ConnectionError):
            await LocalSocketClient.open(server.advertisement, ("Echo",))

    _run(go())
    again = socket.socket(socket.AF_UNIX)
    again.bind(_raw(server.name))  # the name is free again
    again.close()


def test_open_refuses_another_instance_and_a_name_nobody_serves(server):
    name, _, instance = server.advertisement.partition("|")
    with pytest.raises(ConnectionError, match="another server"):
        _run(LocalSocketClient.open(f"{name}|{'0' * len(instance)}", ("Echo",)))
    with pytest.raises(ConnectionError):
        _run(LocalSocketClient.open(f"@alignmesh-nobody-here|{instance}", ("Echo",)))
    with pytest.raises(ConnectionError, match="not an abstract socket name"):
        _run(LocalSocketClient.open(f"/tmp/some.sock|{instance}", ("Echo",)))


def _raw(name: str) -> str:
    return "\0" + name[1:]


def _hung_up(conn: socket.socket) -> bool:
    conn.settimeout(5)
    try:
        return conn.recv(16) == b""
    except ConnectionResetError:
        return True


def test_a_frame_over_the_size_limit_closes_the_connection_without_a_call(server):
    before = _total("Echo", "OK")
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(_raw(server.name))
        conn.sendall(REQUEST.pack(MAGIC, 4, 4096, 0) + b"Echo")
        assert _hung_up(conn)
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(_raw(server.name))
        conn.sendall(struct.pack("!4sHIQ", b"HTTP", 0, 0, 0))
        assert _hung_up(conn)
    assert _total("Echo", "OK") == before


_AS_NOBODY = """
import socket, sys
conn = socket.socket(socket.AF_UNIX)
try:
    conn.connect("\\0" + sys.argv[1])
    conn.sendall(bytes.fromhex(sys.argv[2]))
    conn.settimeout(5)
    print("refused" if conn.recv(64) == b"" else "answered")
except (ConnectionResetError, BrokenPipeError):  # hung up before or while the greeting was sent
    print("refused")
except OSError as exc:
    print("error", exc)
"""


@pytest.mark.skipif(os.getuid() != 0 or not os.path.exists("/usr/bin/python3"),
                    reason="needs root (to connect as another user) and a system python that user may run")
def test_another_user_is_refused(server):
    greeting = REQUEST.pack(MAGIC, 0, 0, 0).hex()
    out = subprocess.run(["/usr/bin/python3", "-c", _AS_NOBODY, server.name[1:], greeting], user=65534,
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "refused", out


def test_a_server_offers_a_socket_only_when_the_cluster_allows_it_and_the_role_has_methods_for_it():
    from alignmesh.services.common.server import ServeSpec, _local_socket
    from alignmesh.services.common.settings import SecurityConfig

    spec = ServeSpec("rollout", "127.0.0.1", 0, 0, SecurityConfig(), local_socket=False)
    assert _local_socket(spec, {"Generate": _echo}) is None
    spec.local_socket = True
    assert _local_socket(spec, None) is None and _local_socket(spec, {}) is None
    local = _local_socket(spec, {"Generate": _echo})
    try:
        assert local is not None and local.advertisement.startswith("@alignmesh-rollout-")
        assert local.advertisement.endswith("|" + local.instance)
    finally:
        local.stop()
