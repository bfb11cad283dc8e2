"""`alignmesh up` supervises its cluster: a member killed with SIGKILL is restarted on its own port and the
launcher says so (the rest keeps running); a member that cannot come back is a crash loop, and the launcher
gives up, stops every process and exits 1 with the reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from alignmesh.deploy.local import health_ok

pytestmark = pytest.mark.integration


def wait(predicate, what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def members(state_dir) -> dict[str, dict]:
    path = state_dir / "cluster.json"
    if not path.exists():
        return {}
    return {f"{m['role']}-{m['replica']}": m for m in json.loads(path.read_text())["members"]}


def test_a_killed_member_is_restarted_and_a_crash_loop_ends_the_cluster(tmp_path, tiny_model_dir):
    rules = tmp_path / "rules.py"
    rules.write_text("def digits(prompt, completion, metadata):\n    return 1.0\n")
    state = tmp_path / "state"
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tiny_model_dir), "state_dir": str(state),
                                   "cache_dir": str(tmp_path / "cache"),
                                   "coordinator": {"runs_dir": str(tmp_path / "runs")},
                                   "reward": {"functions": {"digits": f"{rules}:digits"}}}))
    log = open(tmp_path / "up.log", "w")
    up = subprocess.Popen([sys.executable, "-m", "alignmesh.deploy.cli", "up", str(cfg), "--max-restarts", "2",
                           "--restart-backoff", "0.2"], stdout=log, stderr=subprocess.STDOUT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait(lambda: "cluster healthy" in (tmp_path / "up.log").read_text(), "the cluster")
        before = members(state)
        reward = before["reward-0"]
        os.kill(reward["pid"], signal.SIGKILL)
        wait(lambda: members(state).get("reward-0", {}).get("pid") not in (None, reward["pid"]), "a new reward pid")
        wait(lambda: "reward-0 is back" in (tmp_path / "up.log").read_text(), "the launcher's word")
        assert health_ok(f"127.0.0.1:{reward['port']}")  # the restarted reward, on its own port
        text = (tmp_path / "up.log").read_text()
        assert "reward-0 exited with code -9; restarting it on port" in text and "reward-0 is back" in text
        assert up.poll() is None
        others = {k: v["pid"] for k, v in members(state).items() if k != "reward-0"}
        assert others == {k: v["pid"] for k, v in before.items() if k != "reward-0"}  # nobody else restarted

        rules.unlink()  # the reward service can no longer start: every restart fails
        os.kill(members(state)["reward-0"]["pid"], signal.SIGKILL)
        assert up.wait(120) == 1
        text = (tmp_path / "up.log").read_text()
        assert "reward-0 exited 3 times within 300s" in text and "giving up" in text
        for name, m in before.items():  # every process of the cluster is gone
            with pytest.raises(ProcessLookupError):
                os.kill(m["pid"], 0)
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            up.wait(60)
        log.close()
