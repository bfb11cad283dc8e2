"""The live episodes of one environment service: bounded in number, forgotten when idle too long."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge

from alignmesh.services.common.errors import ConfigError, InvalidArgument, NotFound, ResourceExhausted
from alignmesh.services.common.registry import load_callable
from alignmesh.services.environment.base import ENVIRONMENTS, Environment, Episode, Transition


@dataclass
class Live:
    environment: str
    episode: Episode
    first: str  # the first observation (a repeated Reset answers it again)
    used: float = field(default_factory=time.monotonic)
    done: bool = False


LIVE = Gauge("alignmesh_environment_live_episodes", "Episodes this environment replica holds now")
EPISODES = Counter("alignmesh_environment_episodes_total", "Episodes started, by environment", ["environment"])
ENDED = Counter("alignmesh_environment_episodes_done_total", "Episodes the environment ended (done)",
                ["environment"])


class Environments:
    """Environments by name: the built-ins and the operator's own classes."""

    def __init__(self, default: str, extra: dict[str, str] | None = None):
        self.default = default
        self.classes: dict[str, type] = {name: ENVIRONMENTS.get(name) for name in ENVIRONMENTS.names()}
        for name, ref in (extra or {}).items():
            self.classes[name] = load_callable(ref)
        if default not in self.classes:
            raise ConfigError(f"environment.default: {default!r} is not registered; known: {sorted(self.classes)}")
        self.instances: dict[str, Environment] = {}

    def get(self, name: str) -> tuple[str, Environment]:
        name = name or self.default
        if name not in self.classes:
            raise InvalidArgument("environment", f"unknown environment {name!r}; registered: {sorted(self.classes)}")
        if name not in self.instances:
            self.instances[name] = self.classes[name]()
        return name, self.instances[name]


class EpisodeTable:
    def __init__(self, environments: Environments, max_episodes: int = 4096, idle_s: float = 600.0):
        self.environments, self.max_episodes, self.idle_s = environments, max_episodes, idle_s
        self.live: OrderedDict[str, Live] = OrderedDict()
        self.lock = threading.Lock()

    def reset(self, name: str, starts: list[tuple[str, str, dict[str, str], int]]) -> tuple[str, list[str]]:
        """Start each (episode_id, prompt, metadata, seed); the first observations in order."""
        name, env = self.environments.get(name)
        out = []
        with self.lock:
            self._expire()
            new = sum(1 for eid, *_ in starts if eid not in self.live)
            if len(self.live) + new > self.max_episodes:
                raise ResourceExhausted(f"episodes: {len(self.live)} live + {new} new exceed environment.max_episodes "
                                f"{self.max_episodes}; close finished episodes or raise the limit")
            for i, (eid, prompt, metadata, seed) in enumerate(starts):
                if eid in self.live:
                    out.append(self.live[eid].first)
                    continue
                try:
                    episode, first = env.reset(prompt, metadata, seed)
                except KeyError as exc:
                    raise InvalidArgument(f"episodes[{i}].metadata", f"environment {name!r} needs key {exc}") from None
                except ValueError as exc:
                    raise InvalidArgument(f"episodes[{i}]", f"environment {name!r} cannot start it: {exc}") from None
                self.live[eid] = Live(name, episode, first)
                EPISODES.labels(name).inc()
                out.append(first)
            LIVE.set(len(self.live))
        return name, out

    def step(self, actions: list[tuple[str, str]]) -> list[Transition]:
        with self.lock:
            missing = [eid for eid, _ in actions if eid not in self.live]
            if missing:
                raise NotFound(f"actions: episodes {missing[:3]} are not live here (never reset on this replica, "
                               f"closed, or idle longer than {self.idle_s:.0f}s); reset them first")
            done = [eid for eid, _ in actions if self.live[eid].done]
            if done:
                raise InvalidArgument("actions", f"episodes {done[:3]} are done; reset a new episode")
            lives = [self.live[eid] for eid, _ in actions]
        out = []
        for live, (_, text) in zip(lives, actions):
            t = live.episode.step(text)
            live.used, live.done = time.monotonic(), t.done
            if t.done:
                ENDED.labels(live.environment).inc()
            out.append(t)
        return out

    def close(self, ids: list[str]) -> int:
        with self.lock:
            closed = sum(self.live.pop(eid, None) is not None for eid in ids)
            LIVE.set(len(self.live))
            return closed

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.idle_s
        for eid in [eid for eid, live in self.live.items() if live.used < cutoff]:
            del self.live[eid]
