"""`pip install alignmesh` is the client: a fresh virtual environment with the package's base install (grpcio,
protobuf, pyyaml; no torch) submits and watches a job on a running cluster with the `alignmesh` command, and a
server verb there says what to install instead of failing on a missing torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alignmesh.deploy.local import LocalCluster
from alignmesh.services.common.settings import load_cluster_config

from helpers import cluster_yaml

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def sh(*cmd, timeout=600, env=None, check=True) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {out.returncode}:\n{out.stdout[-3000:]}\n"
                             f"{out.stderr[-3000:]}")
    return out


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    """A new venv with `pip install <wheel of this checkout>`: only what the base install declares."""
    tmp = tmp_path_factory.mktemp("client-only")
    src = tmp / "src"  # build from a copy: a build leaves build/ and *.egg-info behind in its source tree
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv*", ".git", "build", "runs", "*.egg-info",
                                                             "__pycache__", ".alignmesh"))
    sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp / "dist", src)
    wheel = next((tmp / "dist").glob("alignmesh-*.whl"))
    sh(sys.executable, "-m", "venv", tmp / "venv")
    py = tmp / "venv" / "bin" / "python"
    sh(py, "-m", "pip", "install", "-q", wheel)
    return tmp / "venv"


def test_base_install_has_no_torch_and_drives_a_job(client_venv, tiny_model_dir, tmp_path):
    py, cli = client_venv / "bin" / "python", client_venv / "bin" / "alignmesh"
    installed = sh(py, "-m", "pip", "list", "--format=freeze").stdout.lower()
    names = {line.split("==")[0] for line in installed.splitlines()}
    assert "alignmesh" in names and "grpcio" in names and "protobuf" in names and "pyyaml" in names
    for heavy in ("torch", "transformers", "numpy", "prometheus-client", "matplotlib"):
        assert heavy not in names, f"the base install pulled in {heavy}"
    assert sh(py, "-c", "import torch", check=False).returncode != 0

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HOME"] = str(tmp_path)  # no local cluster state to find: the address must come from --coordinator
    cfg = load_cluster_config(cluster_yaml(tmp_path, tiny_model_dir))
    job = tmp_path / "job.yaml"
    job.write_text("algorithm: sft\nsteps: 3\nseed: 1\nparams: {batch_size: 16, eval_every: 3}\n"
                   "eval: {every: 100000, size: 20}\n")
    with LocalCluster(cfg) as cluster:
        address = cluster.coordinator_address()
        submitted = sh(cli, "submit", job, "--coordinator", address, env=env)
        job_id = submitted.stdout.strip().splitlines()[-1]
        watched = sh(cli, "watch", job_id, "--coordinator", address, env=env)
        listed = sh(cli, "jobs", "--coordinator", address, env=env)
        as_json = sh(cli, "jobs", "--coordinator", address, "--output", "json", env=env)
        events = sh(cli, "logs", job_id, "--coordinator", address, "-o", "json", env=env)
        bad = tmp_path / "bad.yaml"
        bad.write_text("steps: -3\n")
        refused = sh(cli, "submit", bad, "--coordinator", address, env=env, check=False)
        missing = sh(cli, "watch", "nosuchjob", "--coordinator", address, env=env, check=False)
    assert f"{job_id} succeeded at step 3" in watched.stdout, watched.stdout
    assert job_id in listed.stdout and "succeeded" in listed.stdout
    jobs = json.loads(as_json.stdout)
    assert [(j["id"], j["state"], j["step"]) for j in jobs] == [(job_id, "succeeded", 3)]
    kinds = [json.loads(line)["kind"] for line in events.stdout.splitlines()]
    assert kinds[0] == "state" and kinds.count("step") >= 3 and "eval" in kinds
    # refusals are one line and an exit code: 3 a bad config (here by the job schema on the client, torch-free,
    # before anything is sent), 6 no such job
    assert refused.returncode == 3 and refused.stderr.strip().splitlines() == [
        f"alignmesh: error: {bad}: steps: must be >= 0, got -3"]
    assert missing.returncode == 6 and "Traceback" not in missing.stderr and "nosuchjob" in missing.stderr

    up = sh(cli, "up", env=env, check=False)
    assert up.returncode == 2
    assert "pip install 'alignmesh[server]'" in up.stderr and "Traceback" not in up.stderr
