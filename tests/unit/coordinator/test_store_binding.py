"""The weight channel's rendezvous store listens on the coordinator's store_host only, not on every interface."""

import datetime as dt
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
    store, listener = listening_store("127.0.0.1", 10)
    port = listener.getsockname()[1]
    assert reachable("127.0.0.1", port)
    assert not reachable("127.0.0.2", port)  # another loopback address: torch's own server would accept it
    client = dist.TCPStore("127.0.0.1", port, None, False, dt.timedelta(seconds=10))
    client.set("k", "v")
    assert store.get("k") == b"v"


def test_torch_default_server_listens_everywhere():
    """Why the socket is bound by hand: the store torch binds itself answers on any address of the host."""
    store = dist.TCPStore("127.0.0.1", 0, None, True, dt.timedelta(seconds=10), wait_for_workers=False)
    assert reachable("127.0.0.2", store.port)
