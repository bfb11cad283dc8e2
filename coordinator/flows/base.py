"""The flow API: what every algorithm (built-in or user-written) gets to drive the role services.

A flow is a class with a ``Params`` dataclass (its knobs, read from the job config's ``params``) and
``async def run(self, ctx: FlowContext)``. It uses the role handles on ``ctx`` and reports through ``ctx``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol

import torch

from alignmesh.coordinator.algos.staleness import staleness_scaled_lr
from alignmesh.coordinator.config import JobConfig
from alignmesh.coordinator.data import Example, PromptSampler, Splits
from alignmesh.coordinator import episodes
from alignmesh.coordinator.flows import sequences
from alignmesh.coordinator.flows.pipeline import PHASES, Ahead, resumed
from alignmesh.coordinator.membership import Membership
from alignmesh.coordinator.handles import ReferencePool, RewardPool, RolloutPool, TrainerHandle
from alignmesh.coordinator.weights import SyncResult, WeightSync
from alignmesh.services.common.errors import ConfigError


class Flow(Protocol):
    Params: type

    async def run(self, ctx: "FlowContext") -> None: ...


class Cancelled(Exception):
    """Raised inside a flow when its job is cancelled."""


KNOBS = {"learning_rate": (0.0, False), "kl_coef": (0.0, True), "temperature": (0.0, False),
         "eval_every": (1.0, True)}  # name -> (lower bound, bound inclusive)


@dataclass
class Control:
    """Live control of a running job: cancel, pause/resume, knob overrides (set by the job API)."""

    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    running: asyncio.Event = field(default_factory=asyncio.Event)  # cleared while paused
    knobs: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.running.set()


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
    control: Control
    critic: TrainerHandle | None = None  # present when the cluster runs a critic
    run_dir: str = ""
    stage: str = "main"
    version: int = 0
    start_step: int = 0  # steps already done (a resumed job)
    on_step_end: Callable[[int], Awaitable[None]] | None = None
    phases: dict[str, float] = field(default_factory=dict)
    step_started: float = 0.0
    trained_cursor: int | None = None  # the sampler's cursor after the prompts of the last step trained
    membership: Membership | None = None  # elastic replicas: applied at every step boundary
    job_id: str = ""
    environment: Any = None  # the environment pool (``environment_pool.EnvironmentPool``) of an agent job
    eval_notes: dict[str, float] = field(default_factory=dict)  # the last evaluation's episode facts
    turns: Any = None  # colocation.Turns: roles that share a device group take turns (None: none do)
    step_lr: float | None = None  # the learning rate the step just trained with (``learning_rate``), reported

    # -- data ---------------------------------------------------------------------------------------------
    def encode(self, examples: list[Example]) -> list[list[int]]:
        return [self.prompt_ids(e.prompt) for e in examples]

    def prompt_ids(self, prompt: str) -> list[int]:
        """A prompt's tokens: the text itself, or (``prompt_format: chat``) a user message through the tokenizer's
        chat template with the assistant's turn opened (the template writes its own special tokens)."""
        if self.config.prompt_format == "chat":
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(prompt)["input_ids"]

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

    @staticmethod
    def fingerprint(examples: list[Example]) -> float:
        """CRC-32 of the step's prompts in order (exact as a float): audits data order across resumes."""
        return float(zlib.crc32("\x1f".join(e.prompt for e in examples).encode()))

    def answer_ids(self, text: str) -> list[int]:
        """A target completion's tokens, ended by eos as a generated completion is."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [int(self.tokenizer.eos_token_id)]

    def demonstrations(self, examples: list[Example]) -> sequences.SequenceBatch:
        """Supervised rows: prompt + answer, or prompt + the example's ``trace`` (model turns each ended by eos
        and trained on; the environment's answers between them tokenized on their own, as in an episode, and
        masked out of the loss)."""
        prompts, completions, masks = self.encode(examples), [], []
        for e in examples:
            ids, mask = [], []
            for i, text in enumerate(e.trace or (e.answer,)):
                part = self.answer_ids(text) if i % 2 == 0 else self.tokenizer(text, add_special_tokens=False)["input_ids"]
                ids += part
                mask += [1.0 if i % 2 == 0 else 0.0] * len(part)
            completions.append(ids)
            masks.append(torch.tensor(mask))
        batch = self.sequences(prompts, completions)
        for row, (q, m) in enumerate(zip(prompts, masks)):
            batch.loss_mask[row, len(q):len(q) + len(m)] = m
        return batch

    def pair_batch(self, pairs: list) -> sequences.SequenceBatch:
        """Preference pairs as one batch: the chosen rows, then the rejected rows in the same order."""
        prompts = [self.prompt_ids(x.prompt) for x in pairs]
        return self.sequences(prompts * 2, [self.answer_ids(x.chosen) for x in pairs] +
                              [self.answer_ids(x.rejected) for x in pairs])

    def sequences(self, prompts: list[list[int]], completions: list[list[int]]) -> sequences.SequenceBatch:
        return sequences.build(prompts, completions, int(self.tokenizer.pad_token_id))

    def concat(self, batches: list[sequences.SequenceBatch]) -> sequences.SequenceBatch:
        return sequences.concat(batches, int(self.tokenizer.pad_token_id))

    def rollout_batch(self, prompts: list[list[int]], out, n: int) -> sequences.SequenceBatch:
        """``n`` samples per prompt as training rows, with the rollout's own log-probabilities in place. Episodes
        bring their own prompts and a loss mask on the model's own tokens (observations are not trained on)."""
        rows = out.prompt_ids if out.prompt_ids is not None else [q for q in prompts for _ in range(n)]
        batch = self.sequences(rows, self.completions(out.completion_ids, out.lengths))
        starts, width = [len(q) for q in rows], batch.input_ids.shape[1]
        batch.behavior_logprobs = sequences.place(out.logprobs, starts, width)
        if out.loss_mask is not None:
            batch.loss_mask = batch.loss_mask * sequences.place(out.loss_mask, starts, width)
        return batch

    async def score(self, examples: list[Example], texts: list[str]) -> torch.Tensor:
        items = [(e.prompt, t, {"answer": e.answer}) for e, t in zip(examples, texts)]
        return await self.reward.score(items, self.config.reward_fn)

    async def sample(self, examples: list[Example], n: int, step: int, attempt: int = 0):
        """Generate ``n`` samples per prompt (all rollout replicas) and score them: (prompts, rollouts, rewards).
        ``attempt``: a further round of the same step (its own seeds). A job with an ``environment`` plays ``n``
        episodes per prompt instead; their rewards are the environment's."""
        s = self.config.sampling
        seed = self.config.seed * 100_003 + step + attempt * 7_777_777
        if self.config.environment is not None:
            with self.phase("generate"):  # the model's turns and the environment's answers
                eps = await self.player().play(examples, n, seed, episodes.Sampling(
                    self.live("temperature", s.temperature), s.top_p, s.max_new_tokens))
            for k, v in episodes.summary(eps).items():
                self.note(k, v, per_episode=True)
            out = episodes.as_rollouts(eps, int(self.tokenizer.pad_token_id))
            return out.prompt_ids[::n], out, torch.tensor([e.reward for e in eps], dtype=torch.float32)
        with self.phase("generate"):
            prompts = self.encode(examples)
            out = await self.rollout.generate(prompts, n=n, seed=seed,
                                              temperature=self.live("temperature", s.temperature), top_p=s.top_p,
                                              max_new_tokens=s.max_new_tokens)
        with self.phase("reward"):
            rewards = await self.score([e for e in examples for _ in range(n)],
                                       self.decode(out.completion_ids, out.lengths))
        return prompts, out, rewards

    # -- weights ------------------------------------------------------------------------------------------
    async def push_weights(self, reference: bool = False, rollout: bool = True) -> SyncResult | None:
        """Publish the trainer's weights to every healthy rollout replica (and the reference if asked).

        Replicas marked down are re-admitted here once their health check passes: they rejoin the sync group and
        receive the current weights before they serve again.
        """
        self.version += 1
        result = None
        if rollout:
            async with self.awake("trainer", "rollout"):
                result = await self.sync.push("rollout", self.rollout, self.version)
        if reference:
            self.reference.source = None  # the trainer's current weights: no directory holds them
            async with self.awake("trainer", "reference"):
                await self.sync.push("reference", self.reference, self.version)
        return result

    def awake(self, *roles: str):
        """Keep ``roles`` awake together (colocated roles otherwise take turns): a context manager."""
        return self.turns.holding(*roles) if self.turns is not None else contextlib.nullcontext()

    # -- evaluation ---------------------------------------------------------------------------------------
    def player(self) -> episodes.Player:
        if self.environment is None:
            raise ConfigError("environment: this job plays episodes but the cluster runs no environment service; "
                              "set environment.replicas >= 1 in the cluster config")
        return episodes.Player(self.rollout, self.environment, self.tokenizer, self.config.environment,
                               self.prompt_ids)

    async def evaluate(self, split: str = "test", size: int | None = None) -> float:
        """Greedy held-out accuracy through the rollout and reward services (or greedy episodes: the share with
        reward > 0.5; their mean facts, e.g. tool use, go with the next ``report_eval``)."""
        examples = getattr(self.data, split)[: size or self.config.eval.size]
        if self.config.environment is not None:
            eps = await self.player().play(examples, 1, 0, episodes.Sampling(1.0, 1.0, self.config.sampling.max_new_tokens,
                                                                             greedy=True))
            sums = episodes.summary(eps)
            prefix = "" if split == "test" else f"{split}_"
            self.eval_notes = {f"{prefix}{k}": v / sums["episodes"] for k, v in sums.items() if k != "episodes"}
            return float(sum(e.reward > 0.5 for e in eps) / len(eps))
        out = await self.rollout.generate(self.encode(examples), n=1, seed=0, greedy=True,
                                          max_new_tokens=self.config.sampling.max_new_tokens)
        rewards = await self.score(examples, self.decode(out.completion_ids, out.lengths))
        return float((rewards > 0.5).float().mean())

    # -- progress -----------------------------------------------------------------------------------------
    @contextmanager
    def phase(self, name: str):
        """Time a phase of the current step (inside the experience producer: of the step being collected)."""
        phases = PHASES.get()
        phases = self.phases if phases is None else phases
        start = time.perf_counter()
        try:
            yield
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - start

    def note(self, name: str, value: float, per_episode: bool = False) -> None:
        """Add to a per-step sum reported with the step (``per_episode``: divided by the step's "episodes" note,
        reported as ``episode_<name>``)."""
        phases = PHASES.get()
        phases = self.phases if phases is None else phases
        key = ("@" if per_episode else "#") + name
        phases[key] = phases.get(key, 0.0) + value

    def live(self, knob: str, default: float) -> float:
        """The job's current value of a live knob (changed by UpdateJob), else ``default``."""
        return self.control.knobs.get(knob, default)

    def learning_rate(self, base: float, lag: float) -> float:
        """A step's learning rate: the live knob (else ``base``); with the job's ``staleness_lr``, divided by
        the samples' mean version ``lag`` where that exceeds 1 (``algos.staleness.staleness_scaled_lr``)."""
        lr = self.live("learning_rate", base)
        self.step_lr = staleness_scaled_lr(lr, lag) if self.config.staleness_lr else lr
        return self.step_lr

    async def steps(self, total: int) -> AsyncIterator[int]:
        """Yield step numbers after ``start_step`` up to ``total``; waits while paused; raises Cancelled."""
        for step in range(self.start_step + 1, total + 1):
            if not self.control.running.is_set() and not self.control.cancel.is_set():
                self.log(f"paused after step {step - 1}")  # the pause has taken hold: no step is in flight
            await resumed(self.control)
            if self.control.cancel.is_set():
                raise Cancelled()
            self.phases = {}
            self.trainer.ledger.reset()  # shared by every role handle
            self.step_started = time.perf_counter()
            await self.refresh_members()
            yield step
            if self.on_step_end is not None:
                await self.on_step_end(step)

    async def refresh_members(self) -> None:
        """Apply the cluster's current rollout/reward/reference membership (``coordinator/membership.py``): new
        replicas join marked down (admitted after their health check and, for rollout, after the next weight push
        brings them to the current version); leaving ones get no new work."""
        m = self.membership
        if m is None:
            return
        await m.refresh_dns()
        generation = m.generation
        for role, pool in (("rollout", self.rollout), ("reward", self.reward), ("reference", self.reference)):
            added, removed = pool.update(m.addresses(role))
            if added or removed:
                self.log(f"{role} replicas: joined {added or '[]'}, left {removed or '[]'}; now {len(pool.eps)}")
        m.applied_by(self.job_id, generation)
        if self.version and any(ep.fresh for ep in self.rollout.eps):  # between steps: the trainer holds version
            async with self.awake("trainer", "rollout"):
                admitted = await self.sync.admit("rollout", self.rollout, self.version)
            if admitted:
                self.log(f"{admitted} new rollout replica(s) admitted at weight version {self.version}")

    async def experience(self, total: int, collect: Callable[[int], Awaitable[Any]]) -> AsyncIterator[tuple[int, Any]]:
        """``steps(total)``, each with ``await collect(step)``: with ``max_staleness`` k > 0, ``collect`` runs for
        up to k later steps while the caller trains this one (``pipeline.Ahead``; in turn up to step
        ``staleness_warmup``); with 0, in turn as before."""
        k = self.config.max_staleness
        if k == 0:
            async for step in self.steps(total):
                item = await collect(step)
                self.trained_cursor = self.sampler.cursor
                yield step, item
            return
        ahead = Ahead(collect, self.start_step + 1, total, k, self.control, lambda: self.sampler.cursor,
                      self.config.staleness_warmup)
        try:
            async for step in self.steps(total):
                with self.phase("wait"):  # the trainer idles: experience is not ready
                    got = await ahead.get(step)
                for name, seconds in got.phases.items():
                    self.phases[name] = self.phases.get(name, 0.0) + seconds
                self.trained_cursor = got.cursor
                yield step, got.item
                ahead.done(step)
        finally:
            await ahead.close()

    def staleness(self, versions: torch.Tensor) -> dict[str, float]:
        """Version lag of the samples about to be trained: mean and max. More than ``max_staleness`` behind is a
        broken invariant (the pipeline bounds it): the step is refused rather than trained on."""
        lag = (self.version - versions).float() if versions.numel() else torch.zeros(1)
        worst = float(lag.max())
        if worst > self.config.max_staleness:
            raise RuntimeError(f"samples {worst:.0f} weight versions behind the trainer exceed max_staleness "
                               f"{self.config.max_staleness}")
        return {"version_lag": float(lag.mean()), "version_lag_max": worst}

    def report(self, step: int, metrics: dict[str, float]) -> None:
        """A step event: the flow's metrics, the time per phase and in total, and the RPC payload of the step."""
        timings = {f"time_{k}": v for k, v in self.phases.items() if k[:1] not in "@#"}
        count = self.phases.get("@episodes", 0.0)
        timings.update({f"episode_{k[1:]}": v / count for k, v in self.phases.items()
                        if k.startswith("@") and k != "@episodes" and count})
        timings.update({k[1:]: v for k, v in self.phases.items() if k.startswith("#")})
        timings["time_step"] = time.perf_counter() - self.step_started
        if self.step_lr is not None:
            timings["learning_rate"], self.step_lr = self.step_lr, None
        timings["rollout_replicas"] = float(sum(ep.healthy for ep in self.rollout.eps))
        timings.update(self.trainer.ledger.metrics())
        self.emit("step", {"stage": self.stage, "step": step, "metrics": {**metrics, **timings}})

    def report_eval(self, step: int, metrics: dict[str, float]) -> None:
        notes, self.eval_notes = self.eval_notes, {}
        self.emit("eval", {"stage": self.stage, "step": step, "metrics": {**metrics, **notes}})

    def log(self, message: str) -> None:
        self.emit("log", {"stage": self.stage, "message": message})
