"""A service bound beyond loopback authenticates its callers or refuses to start (unless told --insecure); the
token can live in a file that the dumped configs never contain."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from alignmesh.deploy.local import free_port, health_ok
from alignmesh.protos.reward.v1 import reward_pb2, reward_pb2_grpc


def serve(cfg, *extra, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "alignmesh.deploy.cli", "serve", "reward", "--config", str(cfg),
                             "--port", str(port), "--host", "0.0.0.0", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_healthy(proc: subprocess.Popen, address: str) -> None:
    deadline = time.monotonic() + 60
    while not health_ok(address):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def test_beyond_loopback_without_auth_is_refused_in_one_line(tmp_path, tiny_model_dir):
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(f"model: {tiny_model_dir}\n")
    proc = serve(cfg, port=free_port())
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "beyond loopback, with no authentication; set security.token_file" in err and "--insecure" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_insecure_flag_and_token_file(tmp_path, tiny_model_dir):
    port = free_port()
    cfg = tmp_path / "open.yaml"
    cfg.write_text(f"model: {tiny_model_dir}\n")
    proc = serve(cfg, "--insecure", port=port)
    try:
        wait_healthy(proc, f"127.0.0.1:{port}")
    finally:
        stop(proc)

    token = tmp_path / "token"
    token.write_text("t0k3n-from-a-file-0123456789\n")
    cfg = tmp_path / "closed.yaml"
    cfg.write_text(f"model: {tiny_model_dir}\nsecurity:\n  token_file: {token}\n")
    port = free_port()
    proc = serve(cfg, port=port)
    try:
        address = f"127.0.0.1:{port}"
        wait_healthy(proc, address)  # health needs no token
        req = reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(prompt="1+1=", completion="2")])
        with grpc.insecure_channel(address) as ch:
            stub = reward_pb2_grpc.RewardServiceStub(ch)
            with pytest.raises(grpc.RpcError) as err:
                stub.Score(req, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok = stub.Score(req, timeout=10, metadata=(("authorization", "Bearer t0k3n-from-a-file-0123456789"),))
            assert ok.scores.shape == [1]  # scored: the token was accepted
            reflect = ProtoReflectionDescriptorDatabase(ch)  # reflection maps the API: it needs the token too
            with pytest.raises(grpc.RpcError) as err:
                reflect.get_services()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        stop(proc)


def test_local_cluster_config_dump_is_private(tmp_path, tiny_model_dir):
    from alignmesh.deploy.local import LocalCluster
    from alignmesh.services.common.settings import ClusterConfig

    cfg = ClusterConfig(model=str(tiny_model_dir), state_dir=str(tmp_path / "state"))
    resolved = LocalCluster(cfg)._resolve()
    assert stat.S_IMODE(resolved.stat().st_mode) == 0o600
