"""A user environment for the tests: never done before its third answer, and stateful (every answer carries how
many turns the episode has seen), so that an episode moved to another replica must be replayed to answer right."""

from __future__ import annotations

from alignmesh.services.environment.base import Transition


class CounterEpisode:
    def __init__(self, seed: int):
        self.seed, self.turns = seed, 0

    def step(self, action: str) -> Transition:
        self.turns += 1
        done = self.turns >= 3
        return Transition(observation="" if done else f"={self.turns}{len(action) % 10} ", reward=float(self.turns),
                          done=done, info={"turns_seen": float(self.turns)})


class Counter:
    def reset(self, prompt: str, metadata: dict[str, str], seed: int):
        return CounterEpisode(seed), prompt
