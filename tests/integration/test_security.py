"""TLS (with client certificates) and the bearer token, on a whole local cluster: the coordinator reaches every role
over mutual TLS with the token, clients without the token are refused, health stays open, plaintext gets nowhere."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest

from alignmesh.clients.client import Client
from alignmesh.deploy.local import LocalCluster, health_ok
from alignmesh.services.common.settings import load_cluster_config

from helpers import cluster_yaml

pytestmark = pytest.mark.integration
TOKEN = "s3cret-token-0123456789"
JOB = ("algorithm: grpo\nsteps: 2\nparams: {prompts_per_step: 4, group_size: 2}\n"
       "eval: {every: 100000, size: 20}\nsampling: {max_new_tokens: 3}\n")


def make_certs(d: Path) -> dict[str, str]:
    """A CA and one certificate for 127.0.0.1/localhost signed by it (servers and clients share it)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=alignmesh-test-ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr",
            "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "node.pem", "-days", "2", "-extfile", "ext.cnf")
    return {"cert": str(d / "node.pem"), "key": str(d / "node.key"), "ca": str(d / "ca.pem")}


@pytest.fixture(scope="module")
def secure(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secure")
    tls = make_certs(tmp)
    cfg = load_cluster_config(cluster_yaml(tmp, tiny_model_dir, security={"token": TOKEN, "tls": tls}))
    with LocalCluster(cfg) as cluster:  # started only if every role's health check passes over TLS
        yield cluster, tls


def test_jobs_run_over_mutual_tls_with_the_token(secure):
    cluster, tls = secure
    read = (lambda key: Path(tls[key]).read_bytes())
    with Client(cluster.coordinator_address(), token=TOKEN, root_certificates=read("ca"), private_key=read("key"),
                certificate_chain=read("cert")) as client:
        job = client.wait(client.submit(JOB, name="secure").id, timeout_s=120)
    assert job.state == "succeeded", job.error  # the coordinator reached trainer, rollout, reward over mTLS


def test_refusals(secure):
    cluster, tls = secure
    address = cluster.coordinator_address()
    read = (lambda key: Path(tls[key]).read_bytes())
    with Client(address, root_certificates=read("ca"), private_key=read("key"), certificate_chain=read("cert"),
                retries=0) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.list()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in err.value.details()
    with Client(address, token=TOKEN, timeout_s=3, retries=0) as plaintext:
        with pytest.raises(grpc.RpcError) as err:
            plaintext.list()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with Client(address, token=TOKEN, root_certificates=read("ca"), timeout_s=3, retries=0) as no_client_cert:
        with pytest.raises(grpc.RpcError) as err:
            no_client_cert.list()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert health_ok(address, security=cluster.cfg.security)  # health needs no token
    assert not health_ok(address)  # but it does need TLS


def test_the_cli_takes_address_token_and_tls_from_the_client_config_file(secure, tmp_path):
    """No flags, no environment: `alignmesh jobs` reaches the mTLS + token cluster from the client config file alone,
    says where each setting came from, and never prints the token."""
    import json
    import os
    import sys

    cluster, tls = secure
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    config = tmp_path / "client.yaml"
    config.write_text(f"coordinator: {cluster.coordinator_address()}\ntoken_file: {token}\ntls_ca: {tls['ca']}\n"
                      f"tls_cert: {tls['cert']}\ntls_key: {tls['key']}\n")
    env = {**os.environ, "ALIGNMESH_CLIENT_CONFIG": str(config)}
    out = subprocess.run([sys.executable, "-m", "alignmesh.deploy.cli", "jobs", "-o", "json"], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert isinstance(json.loads(out.stdout), list)
    assert out.stderr.strip() == (f"coordinator {cluster.coordinator_address()} (from {config}); token from {token}, "
                                  f"TLS from {config}")
    assert TOKEN not in out.stdout + out.stderr
    token.write_text("wrong-token")
    out = subprocess.run([sys.executable, "-m", "alignmesh.deploy.cli", "jobs"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 5 and "refused the call" in out.stderr and "Traceback" not in out.stderr


def test_the_message_cap_is_configurable_and_refuses_larger_requests(tiny_model_dir, tmp_path):
    """``security.max_message_mb: 1``: a 2 MB Score request is RESOURCE_EXHAUSTED; a small one is served."""
    from alignmesh.protos.reward.v1 import reward_pb2, reward_pb2_grpc

    from helpers import serve

    config = cluster_yaml(tmp_path, tiny_model_dir, security={"max_message_mb": 1})
    proc, address, _ = serve("reward", config, tmp_path / "reward.log")
    try:
        with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 8 << 20)]) as ch:
            stub = reward_pb2_grpc.RewardServiceStub(ch)
            small = reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(prompt="1+1=", completion="2")])
            assert stub.Score(small, timeout=10).scores.shape == [1]
            big = reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(prompt="1+1=", completion="2" * (2 << 20))])
            with pytest.raises(grpc.RpcError) as err:
                stub.Score(big, timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert health_ok(address)
    finally:
        proc.terminate()
        proc.wait(15)
