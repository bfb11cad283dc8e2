"""The code-running reward through a real reward service: a batch holding an infinite loop, a fork bomb, a memory
hog, a socket and a write outside the sandbox scores 0 for each of them and 1 for the correct program, and the
service stays SERVING throughout (its health is checked while the batch runs)."""

from __future__ import annotations

import signal
import threading

import grpc
import pytest

from alignmesh.coordinator.convert import score_request, scores_from_proto
from alignmesh.deploy.local import health_ok
from alignmesh.protos.reward.v1 import reward_pb2_grpc

from helpers import cluster_yaml, serve

pytestmark = pytest.mark.integration
TESTS = "assert add(2, 3) == 5\n"
COMPLETIONS = {
    "correct": "```python\ndef add(a, b):\n    return a + b\n```",
    "infinite loop": "def add(a, b):\n    while True:\n        pass\n",
    "fork bomb": "import os\nwhile True:\n    os.fork()\n",
    "memory hog": "x = [bytearray(1 << 26) for _ in range(1000)]\n",
    "socket": "import socket\nsocket.create_connection(('127.0.0.1', 22))\n",
    "write outside": "open('/tmp/alignmesh-reward-escape', 'w').write('x')\ndef add(a, b):\n    return a + b\n",
}


def test_untrusted_code_scores_zero_and_the_service_stays_healthy(tiny_model_dir, tmp_path):
    import os

    proc, address, _ = serve("reward", cluster_yaml(tmp_path, tiny_model_dir), tmp_path / "reward.log")
    try:
        healthy, done = [], threading.Event()

        def watch() -> None:
            while not done.is_set():
                healthy.append(health_ok(address, timeout=2.0))
                done.wait(0.5)

        watcher = threading.Thread(target=watch)
        watcher.start()
        with grpc.insecure_channel(address) as ch:
            req = score_request([("write add", c, {"tests": TESTS}) for c in COMPLETIONS.values()], "code_tests")
            scores = scores_from_proto(reward_pb2_grpc.RewardServiceStub(ch).Score(req, timeout=120)).tolist()
        done.set()
        watcher.join()
        assert dict(zip(COMPLETIONS, scores)) == {name: float(name == "correct") for name in COMPLETIONS}
        assert healthy and all(healthy), healthy
        assert health_ok(address) and proc.poll() is None
        assert not os.path.exists("/tmp/alignmesh-reward-escape")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
