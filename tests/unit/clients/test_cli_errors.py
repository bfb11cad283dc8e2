"""The job verbs turn known failures into one line and a distinct exit code, with no traceback (``--debug``
shows one): nothing answering at the address, a missing config file."""

from __future__ import annotations

import socket
import subprocess
import sys


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "alignmesh.clients.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60, env={"HOME": str(cwd), "PATH": "/usr/bin:/bin"})


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_answering_is_one_line_with_the_fix(tmp_path):
    address = f"127.0.0.1:{dead_port()}"
    out = cli("jobs", "--coordinator", address, cwd=tmp_path)
    assert out.returncode == 4, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"nothing answers at {address}" in lines[0] and "alignmesh up" in lines[0]
    assert "Traceback" not in out.stderr
    debug = cli("jobs", "--coordinator", address, "--debug", cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_a_missing_config_file_is_named(tmp_path):
    out = cli("submit", "nonexist.yaml", "--coordinator", f"127.0.0.1:{dead_port()}", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == "alignmesh: error: job config nonexist.yaml: no such file"


def test_a_bad_config_is_refused_before_anything_is_sent(tmp_path):
    """YAML syntax with its position, unknown keys and bad values by the coordinator's own schema: exit 3, no RPC
    (the address answers nothing, so reaching it would be exit 4)."""
    address = f"127.0.0.1:{dead_port()}"
    cases = {"syntax.yaml": ("steps: 3\nparams: {a: 1\n", "syntax.yaml: line 3 column 1 malformed YAML"),
             "unknown.yaml": ("steps: 3\nstepz: 4\n", "unknown key 'stepz'"),
             "negative.yaml": ("steps: -3\n", "steps: must be >= 0, got -3"),
             "type.yaml": ("steps: many\n", "steps")}
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        out = cli("submit", name, "--coordinator", address, cwd=tmp_path)
        assert out.returncode == 3, (name, out.stderr)
        line = out.stderr.strip()
        assert line.startswith(f"alignmesh: error: {name}") and expected in line and "\n" not in line, line


def alignmesh(*args, cwd):
    """The full entry point (server side installed here)."""
    return subprocess.run([sys.executable, "-m", "alignmesh.deploy.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60, env={"HOME": str(cwd), "PATH": "/usr/bin:/bin"})


def test_validate_checks_offline_and_says_what_it_checked(tmp_path):
    (tmp_path / "ok.yaml").write_text("algorithm: grpo\nsteps: 3\nmax_staleness: 1\nparams: {group_size: 4}\n")
    out = alignmesh("validate", "ok.yaml", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok.yaml: valid (YAML, schema, grpo params)", out
    out = cli("validate", "ok.yaml", cwd=tmp_path)  # the client's verbs alone: no flows to check params with
    assert out.returncode == 0 and out.stdout.startswith("ok.yaml: valid (YAML, schema); params not checked")
    (tmp_path / "params.yaml").write_text("algorithm: grpo\nparams: {group_size: 1}\n")
    out = alignmesh("validate", "params.yaml", cwd=tmp_path)
    assert out.returncode == 3 and "params.group_size: must be >= 2" in out.stderr
    (tmp_path / "stale.yaml").write_text("max_staleness: 99\n")
    out = cli("validate", "stale.yaml", cwd=tmp_path)
    assert out.returncode == 3 and "max_staleness: must be in [0, 16]" in out.stderr


def test_the_python_client_raises_typed_errors_that_keep_the_status():
    import grpc

    import alignmesh
    from alignmesh.clients.client import Client

    with Client(f"127.0.0.1:{dead_port()}", timeout_s=2, retries=0) as client:
        try:
            client.get("nope")
        except alignmesh.errors.Unreachable as exc:
            assert isinstance(exc, grpc.RpcError) and exc.code() == exc.status == grpc.StatusCode.UNAVAILABLE
            assert exc.address.startswith("127.0.0.1:")
        else:
            raise AssertionError("no error from a dead address")


def test_the_address_comes_from_the_flag_then_the_environment_and_jobs_says_which(tmp_path):
    import os

    port = dead_port()
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "ALIGNMESH_COORDINATOR": f"127.0.0.1:{port}",
           "ALIGNMESH_TOKEN": "t0ken-from-the-environment"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "alignmesh.clients.cli", *a], capture_output=True,  # noqa
                                    text=True, cwd=tmp_path, timeout=60, env={**env, **{k: os.environ[k] for k in
                                                                                       ("PYTHONPATH",) if k in os.environ}})
    out = run("jobs")
    assert out.returncode == 4 and f"nothing answers at 127.0.0.1:{port}" in out.stderr
    other = dead_port()
    out = run("jobs", "--coordinator", f"127.0.0.1:{other}")
    assert f"nothing answers at 127.0.0.1:{other}" in out.stderr and "t0ken" not in out.stderr + out.stdout
