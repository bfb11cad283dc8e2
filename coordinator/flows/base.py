"""The flow API: what every algorithm (built-in or user-written) gets to drive the role services.

A flow is a class with a ``Params`` dataclass (its knobs, read from the job config's ``params``) and
``async def run(self, ctx: FlowContext)``. It uses the role handles on ``ctx`` and reports through ``ctx``.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Protocol

import torch

from alignmesh.coordinator.config import JobConfig
from alignmesh.coordinator.data import Example, PromptSampler, Splits
from alignmesh.coordinator.flows import sequences
from alignmesh.coordinator.handles import ReferencePool, RewardPool, RolloutPool, TrainerHandle
from alignmesh.coordinator.weights import SyncResult, WeightSync


class Flow(Protocol):
    Params: type

    async def run(self, ctx: "FlowContext") -> None: ...


class Cancelled(Exception):
    """Raised inside a flow when its job is cancelled."""


@dataclass
class FlowContext:
    config: JobConfig
    params: Any
    rollout: RolloutPool
    reward: RewardPool
    reference: ReferencePool
    trainer: TrainerHandle
    tokenizer: Any
    data: Splits
    sampler: PromptSampler
    sync: WeightSync
    emit: Callable[[str, dict], None]  # (kind, payload) -> job event
    cancel_event: asyncio.Event
    stage: str = "main"
    version: int = 0
    phases: dict[str, float] = field(default_factory=dict)

    # -- data ---------------------------------------------------------------------------------------------
    def encode(self, examples: list[Example]) -> list[list[int]]:
        return [self.tokenizer(e.prompt)["input_ids"] for e in examples]

    def decode(self, ids: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """Completion text up to (not including) eos. Other special tokens stay visible, so a completion that
        hides a pad or bos between digits does not score as the bare digits."""
        eos = self.tokenizer.eos_token_id
        out = []
        for row, n in zip(ids.tolist(), lengths.tolist()):
            toks = row[:n]
            if toks and toks[-1] == eos:
                toks = toks[:-1]
            out.append(self.tokenizer.decode(toks, skip_special_tokens=False))
        return out

    def completions(self, ids: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(ids, lengths)]

    def sequences(self, prompts: list[list[int]], completions: list[list[int]]) -> sequences.SequenceBatch:
        return sequences.build(prompts, completions, int(self.tokenizer.pad_token_id))

    async def score(self, examples: list[Example], texts: list[str]) -> torch.Tensor:
        items = [(e.prompt, t, {"answer": e.answer}) for e, t in zip(examples, texts)]
        return await self.reward.score(items, self.config.reward_fn)

    # -- weights ------------------------------------------------------------------------------------------
    async def push_weights(self, reference: bool = False) -> SyncResult:
        """Publish the trainer's weights to every rollout replica (and the reference model if asked)."""
        self.version += 1
        result = await self.sync.push("rollout", self.rollout.eps, self.version)
        if reference:
            await self.sync.push("reference", self.reference.eps, self.version)
        return result

    # -- evaluation ---------------------------------------------------------------------------------------
    async def evaluate(self, split: str = "test", size: int | None = None) -> float:
        """Greedy held-out accuracy through the rollout and reward services."""
        examples = getattr(self.data, split)[: size or self.config.eval.size]
        out = await self.rollout.generate(self.encode(examples), n=1, seed=0, greedy=True,
                                          max_new_tokens=self.config.sampling.max_new_tokens)
        rewards = await self.score(examples, self.decode(out.completion_ids, out.lengths))
        return float((rewards > 0.5).float().mean())

    # -- progress -----------------------------------------------------------------------------------------
    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - start

    async def steps(self, total: int) -> AsyncIterator[int]:
        """Yield step numbers 1..total; raises Cancelled when the job is cancelled."""
        for step in range(1, total + 1):
            if self.cancel_event.is_set():
                raise Cancelled()
            self.phases = {}
            yield step
            await asyncio.sleep(0)

    def report(self, step: int, metrics: dict[str, float]) -> None:
        timings = {f"time_{k}": v for k, v in self.phases.items()}
        self.emit("step", {"stage": self.stage, "step": step, "metrics": {**metrics, **timings}})

    def report_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.emit("eval", {"stage": self.stage, "step": step, "metrics": metrics})

    def log(self, message: str) -> None:
        self.emit("log", {"stage": self.stage, "message": message})
