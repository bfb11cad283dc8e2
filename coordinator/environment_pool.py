"""The handle to the environment replicas. Episodes are sticky: every call of an episode goes to the replica that
reset it. When that replica fails, the episode moves: it is reset on another replica and its actions so far are
replayed there (an environment is deterministic in its task and seed); a replay that answers differently is an
error, never a silent switch to a different episode."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import grpc

from alignmesh.coordinator.handles import RETRYABLE, Endpoint, Pool, connect, probe
from alignmesh.protos.environment.v1 import environment_pb2 as pb
from alignmesh.protos.environment.v1 import environment_pb2_grpc
from alignmesh.services.common.errors import Aborted, Unavailable
from alignmesh.services.common.settings import SecurityConfig

log = logging.getLogger("alignmesh.environment")


@dataclass
class Answer:
    observation: str
    reward: float
    done: bool
    info: dict[str, float]


@dataclass
class Record:
    """What it takes to rebuild an episode elsewhere: its start and every action with the answer it got."""

    start: pb.EpisodeStart
    environment: str
    first: str = ""
    steps: list[tuple[str, str]] = field(default_factory=list)  # (action, observation)


class EnvironmentPool(Pool):
    def __init__(self, eps: list[Endpoint], timeout_s: float, **kwargs):
        super().__init__(eps, timeout_s, retries=0, **kwargs)
        self.home: dict[str, Endpoint] = {}
        self.records: dict[str, Record] = {}

    async def _readmit(self) -> None:
        for ep in self.eps:
            if not ep.healthy and await probe(ep, timeout_s=0.5):
                ep.healthy = True

    def _other(self, avoid: Endpoint) -> Endpoint:
        up = [e for e in self.eps if e.healthy and e is not avoid]
        if not up:
            raise Unavailable(f"environment: no healthy replica left to move episodes to (last: {avoid.address})")
        return up[len(self.home) % len(up)]

    async def reset(self, environment: str, starts: list[pb.EpisodeStart]) -> list[str]:
        """Start episodes spread over the healthy replicas; their first observations in order."""
        await self._readmit()
        up = [e for e in self.eps if e.healthy] or self.eps
        for i, s in enumerate(starts):
            self.records[s.episode_id] = Record(s, environment)
            self.home[s.episode_id] = up[i % len(up)]
        await self._on_homes([s.episode_id for s in starts], self._reset_on)
        return [self.records[s.episode_id].first for s in starts]

    async def step(self, actions: list[tuple[str, str]]) -> list[Answer]:
        answers: dict[str, Answer] = {}

        async def on(ep: Endpoint, ids: list[str]) -> None:
            texts = dict(actions)
            req = pb.StepRequest(actions=[pb.Action(episode_id=i, text=texts[i]) for i in ids])
            resp = await self._timed(ep, "Step", req, self.timeout_s)
            for t in resp.transitions:
                answers[t.episode_id] = Answer(t.observation, t.reward, t.done, dict(t.info))
                self.records[t.episode_id].steps.append((texts[t.episode_id], t.observation))

        await self._on_homes([a for a, _ in actions], on)
        missing = [a for a, _ in actions if a not in answers]
        if missing:
            raise Aborted(f"environment: no answer for episodes {missing[:3]}")
        return [answers[a] for a, _ in actions]

    async def close_episodes(self, ids: list[str]) -> None:
        """Free the episodes on their replicas (best effort: a replica's idle timeout frees them anyway)."""
        by_home: dict[int, tuple[Endpoint, list[str]]] = {}
        for i in ids:
            ep = self.home.pop(i, None)
            self.records.pop(i, None)
            if ep is not None:
                by_home.setdefault(id(ep), (ep, []))[1].append(i)
        for ep, group in by_home.values():
            try:
                await self._timed(ep, "Close", pb.CloseRequest(episode_ids=group), min(self.timeout_s, 10.0))
            except grpc.aio.AioRpcError as exc:
                log.warning("environment replica %s: Close failed %s", ep.address, exc.code().name)

    async def _reset_on(self, ep: Endpoint, ids: list[str]) -> None:
        rec0 = self.records[ids[0]]
        resp = await self._timed(ep, "Reset", pb.ResetRequest(environment=rec0.environment,
                                                               episodes=[self.records[i].start for i in ids]),
                                 self.timeout_s)
        for i, obs in zip(ids, resp.observations):
            self.records[i].first = obs.text

    async def _on_homes(self, ids: list[str], fn) -> None:
        """``fn(endpoint, its episodes)`` on every home replica at once; episodes of a replica that fails move
        (reset + replay) and ``fn`` runs again for them on their new home."""
        pending = list(ids)
        for _ in range(len(self.eps) + 1):
            groups: dict[int, tuple[Endpoint, list[str]]] = {}
            for i in pending:
                groups.setdefault(id(self.home[i]), (self.home[i], []))[1].append(i)
            failed: list[str] = []

            async def run(ep: Endpoint, group: list[str]) -> None:
                try:
                    await fn(ep, group)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in RETRYABLE:
                        raise
                    log.warning("environment replica %s failed (%s); moving %d episodes", ep.address,
                                exc.code().name, len(group))
                    ep.healthy = False
                    failed.extend(group)

            await asyncio.gather(*(run(ep, g) for ep, g in groups.values()))
            if not failed:
                return
            for i in failed:
                await self._move(i)
            pending = failed
        raise Unavailable(f"environment: episodes {pending[:3]} could not be served by any replica")

    async def _move(self, episode_id: str) -> None:
        """Reset the episode on another replica and replay its actions, checking every answer is the same."""
        rec, ep = self.records[episode_id], self._other(self.home[episode_id])
        self.home[episode_id] = ep
        first = rec.first
        await self._reset_on(ep, [episode_id])
        if first and rec.first != first:
            raise Aborted(f"environment {rec.environment!r}: episode {episode_id} starts differently on replica "
                          f"{ep.address}; the environment is not deterministic in its task and seed, so the episode "
                          f"cannot move")
        for action, observation in rec.steps:
            resp = await self._timed(ep, "Step", pb.StepRequest(actions=[pb.Action(episode_id=episode_id,
                                                                                    text=action)]), self.timeout_s)
            if resp.transitions[0].observation != observation:
                raise Aborted(f"environment {rec.environment!r}: replaying episode {episode_id} on {ep.address} "
                              f"answered differently; the environment is not deterministic, so the episode cannot "
                              f"move")


def environment_pool(addresses: list[str], security: SecurityConfig, timeout_s: float, ledger=None) -> EnvironmentPool:
    eps = [connect("environment", i, a, security, environment_pb2_grpc.EnvironmentServiceStub)
           for i, a in enumerate(addresses)]
    return EnvironmentPool(eps, timeout_s, ledger=ledger)
