"""``alignmesh up`` keeps its cluster alive the way compose's restart policy or systemd would: a member that exits
is started again on its own ports after an exponential backoff, and the launcher says so; a member that keeps
crashing (more than ``max_restarts`` times within ``window_s``) is a crash loop, and the launcher gives up."""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable

from alignmesh.deploy.local import LocalCluster


class CrashLoop(RuntimeError):
    pass


class Supervisor:
    def __init__(self, cluster: LocalCluster, max_restarts: int = 5, window_s: float = 300.0,
                 backoff_s: float = 1.0, max_backoff_s: float = 30.0, say: Callable[[str], None] = print):
        self.cluster, self.max_restarts, self.window_s = cluster, max_restarts, window_s
        self.backoff_s, self.max_backoff_s, self.say = backoff_s, max_backoff_s, say
        self.crashes: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self.stopped = threading.Event()  # set to end ``run`` (from another thread)
        self.restarts = 0

    def run(self, poll_s: float = 0.5, scale_every_s: float = 1.0) -> None:
        """Watch until interrupted or ``stopped``; raises CrashLoop. Also reconciles the replica counts asked of
        the coordinator (``alignmesh scale``: ``deploy/scaler.py``)."""
        from alignmesh.deploy.scaler import Scaler

        self.scaler = Scaler(self.cluster, say=self.say)
        next_scale = 0.0
        try:
            while not self.stopped.is_set():
                for i, proc in enumerate(list(self.cluster._procs)):
                    if proc.poll() is not None and self.scaler.starting.get(self.cluster.members[i].name) is None:
                        self._revive(i, proc.returncode)
                if time.monotonic() >= next_scale:
                    try:
                        self.scaler.tick()
                    except Exception as exc:  # scaling never stops the supervision
                        self.say(f"scaling: {exc!r}")
                    next_scale = time.monotonic() + scale_every_s
                time.sleep(poll_s)
        finally:
            self.scaler.close()

    def _revive(self, i: int, code: int) -> None:
        m = self.cluster.members[i]
        history, now = self.crashes[m.name], time.monotonic()
        while history and now - history[0] > self.window_s:
            history.popleft()
        history.append(now)
        if len(history) > self.max_restarts:
            raise CrashLoop(f"{m.name} exited {len(history)} times within {self.window_s:.0f}s (last code {code}); "
                            f"giving up (log: {m.log})")
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (len(history) - 1))
        self.say(f"{m.name} exited with code {code}; restarting it on port {m.port} in {delay:.1f}s "
                 f"(restart {len(history)} of at most {self.max_restarts}; log: {m.log})")
        time.sleep(delay)
        try:
            self.cluster.restart(m.role, m.replica)
        except RuntimeError as exc:  # died again while starting: seen and counted on the next pass
            self.say(f"{m.name}: {exc}")
            return
        self.restarts += 1
        self.say(f"{m.name} is back (pid {self.cluster._procs[i].pid})")
