"""The weight channel's rendezvous store listens on the coordinator's store_host only, not on every interface,
and owns its listening descriptor alone."""

import datetime as dt
import gc
import os
import socket

import torch.distributed as dist

from alignmesh.coordinator.weights import listening_store


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def test_store_listens_on_its_host_only():
    store = listening_store("127.0.0.1", 10)
    port = store.port
    assert reachable("127.0.0.1", port)
    assert not reachable("127.0.0.2", port)  # another loopback address: torch's own server would accept it
    client = dist.TCPStore("127.0.0.1", port, None, False, dt.timedelta(seconds=10))
    client.set("k", "v")
    assert store.get("k") == b"v"


def test_torch_default_server_listens_everywhere():
    """Why the socket is bound by hand: the store torch binds itself answers on any address of the host."""
    store = dist.TCPStore("127.0.0.1", 0, None, True, dt.timedelta(seconds=10), wait_for_workers=False)
    assert reachable("127.0.0.2", store.port)


def open_fds() -> set[int]:
    """The process's open descriptors, less the one the listing itself used (closed when it returns)."""
    listed = {int(name) for name in os.listdir("/proc/self/fd")}
    return {fd for fd in listed if still_open(fd)}


def still_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_a_dropped_store_closes_its_socket_once():
    """torch closes the descriptor it was handed when the store goes: nothing else may close that number again,
    or the descriptor opened under it next (here a pipe; in the coordinator once gRPC's poller) is closed too."""
    gc.collect()
    before = open_fds()
    store = listening_store("127.0.0.1", 10)
    port = store.port
    del store
    gc.collect()
    assert not reachable("127.0.0.1", port)
    read_end, write_end = os.pipe()  # takes the lowest free numbers: the store's, if it freed one
    try:
        gc.collect()
        os.fstat(read_end), os.fstat(write_end)  # EBADF if a second owner closed the store's number again
        os.write(write_end, b"x")
        assert os.read(read_end, 1) == b"x"
        assert open_fds() - before == {read_end, write_end}  # and nothing else was left open
    finally:
        os.close(read_end), os.close(write_end)
