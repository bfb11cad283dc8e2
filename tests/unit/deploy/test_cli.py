"""CLI errors are one line that names the problem (the launcher never starts a process for a bad config)."""

import socket
import subprocess
import sys

import pytest


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "alignmesh.deploy.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.mark.parametrize("text, message", [
    ("rollout:\n  replicas: [1, 2\n", "malformed YAML"),
    ("rollout:\n  replica: 2\n", "unknown key 'rollout.replica'"),
    ("model: /nonexistent/model\n", "model: /nonexistent/model is not a model directory"),
])
def test_up_rejects_bad_config_in_one_line(tmp_path, text, message):
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(text + f"state_dir: {tmp_path / 'state'}\n")
    out = run_cli("up", str(cfg), cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr


def test_up_rejects_a_port_in_use(tmp_path, tiny_model_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = tmp_path / "cluster.yaml"
        cfg.write_text(f"model: {tiny_model_dir}\nbase_port: {port}\nstate_dir: {tmp_path / 'state'}\n")
        out = run_cli("up", str(cfg), cwd=tmp_path)
    assert out.returncode == 2
    assert f"port {port} (trainer replica 0 gRPC) is already in use" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_every_verb_has_help_with_an_example():
    import contextlib
    import io

    from alignmesh.deploy.cli import build_parser

    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    assert {"submit", "validate", "jobs", "watch", "logs", "cancel", "pause", "resume", "update", "serve", "up",
            "down", "status", "demo", "run", "init-model"} <= set(verbs)
    for name, sub in verbs.items():
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            try:
                sub.parse_args(["--help"])
            except SystemExit:
                pass
        assert sub.description and "example:\n  alignmesh " + name in text.getvalue(), name
