"""Writes that survive a crash or a power cut: a file is written beside its target, fsynced, renamed over it,
and the directory is fsynced so the rename itself is on disk; a directory is swapped in atomically."""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from pathlib import Path

_RENAME_EXCHANGE = 2  # linux/fs.h


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text`` atomically: a reader sees the old file or the new one, never a torn one.
    ``mode``: the file's permissions (private unless said otherwise)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    return fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0


def replace_dir(tmp: Path, path: Path) -> None:
    """Put the finished directory ``tmp`` at ``path``. With a previous ``path``, the two are exchanged atomically
    where the system allows it (no moment without a ``path``), and the old one removed; then the parent directory
    is fsynced."""
    if path.exists() and _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous directory
    else:
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    fsync_dir(path.parent)
