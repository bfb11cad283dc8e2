"""The CPU compose stack started for real (deploy/docker-compose.cpu.yml, images from deploy/build-cpu-images.sh):
every role healthy, Prometheus scraping every target, a job submitted from the host with the Python client runs to
the end, `docker-compose up --scale rollout=3` adds replicas that take work, `docker-compose down -v` leaves
nothing. Skipped, with the reason, where no Docker daemon runs or the images are not built (CI builds them)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from alignmesh.clients.client import Client

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ["docker-compose", "-p", "alignmesh-ci", "-f", str(ROOT / "deploy" / "docker-compose.cpu.yml")]
PROMPTS, GROUP = 8, 4


def run(*cmd: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def why_not() -> str:
    if shutil.which("docker") is None or shutil.which("docker-compose") is None:
        return "docker and docker-compose are not installed"
    if run("docker", "info", timeout=30).returncode != 0:
        return "no Docker daemon answers"
    for image in ("alignmesh:cpu", "alignmesh-prometheus:cpu"):
        if run("docker", "image", "inspect", image, timeout=30).returncode != 0:
            return f"image {image} is not built (bash deploy/build-cpu-images.sh)"
    return ""


def wait(predicate, what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def containers() -> list[dict]:
    out = run("docker", "ps", "-a", "--filter", "label=com.docker.compose.project=alignmesh-ci", "--format",
              "{{json .}}").stdout
    return [json.loads(line) for line in out.splitlines()]


def healthy(service: str, count: int = 1) -> bool:
    states = [run("docker", "inspect", "--format", "{{.State.Health.Status}}", c["ID"]).stdout.strip()
              for c in containers() if c["Labels"].find(f"com.docker.compose.service={service}") >= 0]
    return len(states) == count and all(s == "healthy" for s in states)


def scraped() -> dict[str, int]:
    """Prometheus's active targets that are up, counted by their service label."""
    try:
        data = json.load(urllib.request.urlopen("http://127.0.0.1:9090/api/v1/targets", timeout=5))
    except OSError:
        return {}
    up: dict[str, int] = {}
    for t in data["data"]["activeTargets"]:
        if t["health"] == "up":
            up[t["labels"]["service"]] = up.get(t["labels"]["service"], 0) + 1
    return up


@pytest.fixture(scope="module")
def stack():
    reason = why_not()
    if reason:
        pytest.skip(reason)
    run(*COMPOSE, "down", "-v")
    up = run(*COMPOSE, "up", "-d")
    assert up.returncode == 0, up.stderr
    try:
        yield
    finally:
        logs = run(*COMPOSE, "logs", "--no-color", "--tail", "30").stdout
        down = run(*COMPOSE, "down", "-v", "--timeout", "30")
        assert down.returncode == 0, down.stderr + logs


def test_the_compose_stack_runs_a_job_scales_and_leaves_nothing(stack):
    for service in ("trainer", "reward", "reference", "rollout", "coordinator"):
        wait(lambda: healthy(service), f"{service} to be healthy")
    wait(lambda: scraped() == {"trainer": 1, "reward": 1, "reference": 1, "coordinator": 1, "rollout": 1},
         "Prometheus to scrape every target", 120)
    token = run(*COMPOSE, "exec", "-T", "coordinator", "cat", "/state/token").stdout.strip()
    assert len(token) >= 32
    with Client("127.0.0.1:50051", token=token, timeout_s=30) as client:
        done = client.wait(client.submit(f"steps: 20\nseed: 1\nparams: {{prompts_per_step: {PROMPTS}, group_size: "
                                         f"{GROUP}}}\neval: {{every: 100000, size: 20}}\n", name="compose").id,
                           timeout_s=600)
        assert done.state == "succeeded", done.error  # a job from the host runs to the end
        job = client.submit(f"steps: 100000\nseed: 2\nparams: {{prompts_per_step: {PROMPTS}, group_size: {GROUP}}}\n"
                            f"eval: {{every: 100000, size: 20}}\n", name="scaled")
        wait(lambda: client.get(job.id).step >= 3, "3 steps")
        client.pause(job.id)  # held between steps while the new replicas start (the job would outrun them)
        scale = run(*COMPOSE, "up", "-d", "--scale", "rollout=3")
        assert scale.returncode == 0, scale.stderr
        wait(lambda: healthy("rollout", 3), "3 healthy rollout containers")
        wait(lambda: sum(m.role == "rollout" and m.state == "active" for m in client.members()[0]) == 3,
             "3 registered rollout replicas")
        client.resume(job.id)
        steps = lambda: {e.step: e.metrics for e in client.events(job.id)  # noqa: E731
                         if e.kind == "step" and e.stage == "main"}
        wait(lambda: sum(m["rollout_replicas"] == 3 for m in steps().values()) >= 3, "3 steps on 3 replicas")
        client.cancel(job.id)
        client.wait(job.id, timeout_s=120)
        got = steps()
        assert sorted(got) == list(range(1, max(got) + 1))
        assert all(m["samples"] == PROMPTS * GROUP for m in got.values())  # nothing lost or doubled
        wait(lambda: scraped().get("rollout") == 3, "Prometheus to scrape the 3 replicas", 60)
    down = run(*COMPOSE, "down", "-v", "--timeout", "30")
    assert down.returncode == 0, down.stderr
    assert containers() == []
    volumes = run("docker", "volume", "ls", "-q", "--filter", "label=com.docker.compose.project=alignmesh-ci")
    assert volumes.stdout.strip() == ""
