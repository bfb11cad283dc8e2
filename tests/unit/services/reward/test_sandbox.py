"""The code-running reward's sandbox: an infinite loop, a sleeper, a fork bomb, a memory hog, a socket, a write
outside its directory, a huge file and ctypes each fail (reward 0) within the wall-clock limit, leaving nothing
behind; correct code passes (reward 1)."""

from __future__ import annotations

import os
import time

import pytest

from alignmesh.services.reward.rules import code_tests, extract_code
from alignmesh.services.reward.sandbox import Limits, run_python

LIMITS = Limits(wall_s=3.0, cpu_s=2)
ATTACKS = {
    "infinite loop": ("while True:\n    pass\n", "killed by SIGKILL"),
    "sleeps past the wall clock": ("import time\ntime.sleep(60)\n", "timed out"),
    "fork bomb": ("import os\nwhile True:\n    os.fork()\n", "os.fork is not allowed"),
    "subprocess": ("import subprocess\nsubprocess.run(['sh', '-c', 'echo hi'])\n", "subprocess.Popen is not allowed"),
    "memory hog": ("blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 1024 * 1024))\n", "MemoryError"),
    "socket": ("import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)\n",
               "socket.__new__ is not allowed"),
    "write outside": ("open('/tmp/alignmesh-sandbox-escape', 'w').write('x')\n", "outside the working directory"),
    "remove outside": ("import os\nos.remove('/etc/hostname')\n", "os.remove outside the working directory"),
    "huge file": ("open('big', 'wb').write(b'x' * (8 * 1024 * 1024))\n", "File too large"),
    "ctypes": ("import ctypes\nctypes.CDLL(None).fork()\n", "import is not allowed"),
}


@pytest.mark.parametrize("name", ATTACKS)
def test_each_attack_fails_within_the_limits_and_leaves_nothing(name):
    program, why = ATTACKS[name]
    start = time.monotonic()
    out = run_python(program, LIMITS)
    assert not out.passed
    assert why in out.reason + out.output, (out.reason, out.output[-300:])
    assert time.monotonic() - start < LIMITS.wall_s + 2
    assert not os.path.exists("/tmp/alignmesh-sandbox-escape") and os.path.exists("/etc/hostname")


def test_correct_code_passes_and_may_use_its_own_directory():
    program = "open('scratch.txt', 'w').write('42')\nassert int(open('scratch.txt').read()) == 42\n"
    assert run_python(program, LIMITS).passed


@pytest.mark.skipif(os.geteuid() != 0, reason="the network namespace and the unprivileged user need root")
def test_below_the_audit_hook_the_child_has_no_network_and_no_privileges():
    """What the hook does not see (a C extension, a bug) meets the process's own walls: as nobody, in an empty
    network namespace. Checked from inside through paths the hook allows."""
    program = ("import os\nassert os.getuid() == 65534 and os.getgid() == 65534\n"
               "lines = open('/proc/self/net/dev').read().splitlines()[2:]\n"
               "assert [l.split(':')[0].strip() for l in lines] == ['lo'], lines\n"
               "assert open('/proc/self/net/route').read().splitlines()[1:] == []\n")
    out = run_python(program, LIMITS)
    assert out.passed, out.output


def test_the_reward_extracts_the_fenced_program_and_runs_the_tests():
    tests = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
    good = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\n"
    assert extract_code(good).strip() == "def add(a, b):\n    return a + b"
    assert code_tests("", good, {"tests": tests}) == 1.0
    assert code_tests("", "def add(a, b):\n    return a - b\n", {"tests": tests}) == 0.0
    assert code_tests("", "def add(a, b):\n    while True: pass\n", {"tests": tests}) == 0.0
    with pytest.raises(KeyError):
        code_tests("", good, {})
