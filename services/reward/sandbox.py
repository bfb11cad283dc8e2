"""Run untrusted generated code against tests, in a child process that cannot hurt the service.

Layers, each enough for some attack and together for the ones the tests try:
- a fresh working directory, removed afterwards; a minimal environment; ``python -I -S`` (no user site, no
  ``PYTHON*`` variables, no site-packages);
- its own process group (``setsid``), killed whole (SIGKILL) at the wall-clock timeout;
- resource limits: CPU seconds, address space, the size of any file written, open files, and no core dumps;
- with root: an unprivileged user (nobody) limited to ``max_processes`` processes, in a network namespace of its
  own with no interface but a loopback that is down (``unshare(CLONE_NEWNET)``): no socket reaches anything;
  without root, a user and network namespace where the kernel allows one;
- a Python audit hook installed before the code runs: opening a file for writing outside the working directory,
  creating sockets, starting processes (fork, exec, spawn, system) and loading ctypes raise ``PermissionError``.

The result is pass (the program exits 0) or fail with the reason; the caller turns it into a reward.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

NOBODY = 65534


@dataclass(frozen=True)
class Limits:
    wall_s: float = 5.0
    cpu_s: int = 2
    memory_mb: int = 512
    file_mb: int = 1
    open_files: int = 32
    max_processes: int = 8  # for the unprivileged user the child runs as (with root)


@dataclass(frozen=True)
class Outcome:
    passed: bool
    reason: str  # "passed", "failed (exit N)", "timed out", "killed by SIGXCPU", ...
    output: str = ""


# Runs first in the child: the audit hook, then the program (compiled from the file, so tracebacks name it).
BOOT = r"""
import os, sys
HERE = os.path.realpath(os.getcwd())
BLOCKED = {"socket.__new__", "socket.connect", "socket.bind", "os.fork", "os.forkpty", "os.system", "os.exec",
           "os.posix_spawn", "os.spawn", "subprocess.Popen", "ctypes.dlopen", "ctypes.cdata", "os.kill",
           "os.killpg", "pty.spawn"}
WRITES = {"os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown", "os.symlink", "os.link",
          "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
def inside(path):
    try:
        real = os.path.realpath(os.fsdecode(path) if not isinstance(path, int) else ".")
    except Exception:
        return False
    return real == HERE or real.startswith(HERE + os.sep)
def hook(event, args):
    if event in BLOCKED or (event == "import" and args and args[0] in ("ctypes", "_ctypes")):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open" and args:
        path, mode, flags = args[0], args[1] or "r", args[2] or 0
        writing = any(c in str(mode) for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if writing and not inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the working directory is not allowed")
    if event in WRITES and args and not all(inside(a) for a in args[:2] if isinstance(a, (str, bytes))):
        raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")
sys.addaudithook(hook)
del hook
with open("program.py") as f:
    source = f.read()
code = compile(source, "program.py", "exec")
del f, source
exec(code, {"__name__": "__main__"})
"""


# Runs first, still as the caller's user: limits, the network namespace, the unprivileged user; then BOOT.
LAUNCH = r"""
import ctypes, os, resource, sys
cpu, mem, fsize, nofile, nproc = (int(x) for x in sys.argv[1:6])
for res, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, mem), (resource.RLIMIT_FSIZE, fsize),
                   (resource.RLIMIT_NOFILE, nofile), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(res, (value, value))
libc = ctypes.CDLL(None, use_errno=True)
if os.geteuid() == 0:
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET: no interface but a loopback that is down
        sys.exit(97)
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
else:
    libc.unshare(0x10000000 | 0x40000000)  # CLONE_NEWUSER | CLONE_NEWNET where the kernel lets users do it
del ctypes, libc, sys.modules["ctypes"], sys.modules["_ctypes"]
exec(sys.argv[6])
"""


def sandbox_python() -> str:
    """An interpreter the unprivileged user can run with its standard library (the system's, when there is one:
    a root-owned virtualenv's base may sit in a directory only root can enter)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


def run_python(program: str, limits: Limits = Limits()) -> Outcome:
    """Run ``program`` (Python source) in the sandbox; passed when it exits 0 within the limits."""
    workdir = tempfile.mkdtemp(prefix="alignmesh-sandbox-")
    as_root = os.geteuid() == 0
    try:
        with open(os.path.join(workdir, "program.py"), "w") as f:
            f.write(program)
        if as_root:
            os.chown(workdir, NOBODY, NOBODY)
            os.chmod(workdir, 0o700)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir}
        mb = 1024 * 1024
        args = [str(v) for v in (limits.cpu_s, limits.memory_mb * mb, limits.file_mb * mb, limits.open_files,
                                 limits.max_processes)]
        proc = subprocess.Popen([sandbox_python(), "-I", "-S", "-c", LAUNCH, *args, BOOT], cwd=workdir, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
        try:
            out, _ = proc.communicate(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return Outcome(False, "timed out")
        _kill_group(proc)  # anything it left behind in its group
        text = out.decode(errors="replace")[-2000:]
        if proc.returncode == 0:
            return Outcome(True, "passed", text)
        if proc.returncode < 0:
            return Outcome(False, f"killed by {signal.Signals(-proc.returncode).name}", text)
        return Outcome(False, f"failed (exit {proc.returncode})", text)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
