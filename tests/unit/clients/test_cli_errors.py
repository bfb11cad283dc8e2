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
