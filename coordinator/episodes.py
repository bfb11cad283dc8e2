"""Multi-turn episodes, token in, token out.

An episode starts from the environment's first observation (tokenized like a prompt). Each turn the rollout
samples the model's next turn from the exact token ids so far, ended by its end-of-turn token (eos); those ids are
appended unchanged (never decoded and re-encoded). The turn's text goes to the environment, whose answer is
tokenized on its own and appended. The loss mask is 1 on the model's own tokens only; the rollout's per-token
log-probabilities stay in place for the importance ratio. An episode ends when the environment says done, or when
``max_turns`` model turns or ``max_tokens`` tokens after the prompt are used (with the rewards it has then).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Callable

import torch

from alignmesh.coordinator.config import EnvironmentSpec
from alignmesh.coordinator.convert import Rollouts
from alignmesh.protos.environment.v1 import environment_pb2 as pb
from alignmesh.services.common.errors import Aborted


@dataclass
class Episode:
    id: str
    prompt: list[int]  # the first observation's tokens
    tokens: list[int] = field(default_factory=list)  # everything after the prompt
    sampled: list[float] = field(default_factory=list)  # 1.0 where the model sampled the token
    logprobs: list[float] = field(default_factory=list)  # the rollout's own, where it sampled; 0 elsewhere
    turns: list[list[int]] = field(default_factory=list)  # each model turn's ids exactly as the rollout returned
    reward: float = 0.0
    done: bool = False
    end: str = ""  # "done" (the environment), "turns" or "tokens" (a budget ran out)
    version: int | None = None  # the oldest weight version among its turns
    info: dict[str, float] = field(default_factory=dict)


@dataclass
class Sampling:
    temperature: float
    top_p: float
    max_new_tokens: int  # per turn
    greedy: bool = False


class Player:
    """Plays episodes of one job: ``rollout`` and ``env`` are the pools, ``prompt_ids`` tokenizes a first
    observation the way the job tokenizes prompts."""

    def __init__(self, rollout, env, tokenizer, spec: EnvironmentSpec, prompt_ids: Callable[[str], list[int]]):
        self.rollout, self.env, self.tok, self.spec, self.prompt_ids = rollout, env, tokenizer, spec, prompt_ids
        self.eos = int(tokenizer.eos_token_id)

    async def play(self, examples: list, n: int, seed: int, sampling: Sampling) -> list[Episode]:
        """``n`` episodes per example (episode ``i * n + j`` is the j-th of example i)."""
        key = uuid.uuid4().hex[:12]
        starts = [pb.EpisodeStart(episode_id=f"{key}-{i}", prompt=e.prompt, metadata={"answer": e.answer},
                                  seed=seed * 1_000_003 + i) for i, e in enumerate(x for x in examples for _ in range(n))]
        firsts = await self.env.reset(self.spec.name, starts)
        episodes = [Episode(s.episode_id, self.prompt_ids(text)) for s, text in zip(starts, firsts)]
        try:
            for turn in range(self.spec.max_turns):
                active = [e for e in episodes if not e.done]
                if not active:
                    break
                await self._model_turn(active, seed + 7_919 * turn, sampling)
                await self._environment_turn(active, last=turn == self.spec.max_turns - 1)
        finally:
            await self.env.close_episodes([e.id for e in episodes])
        return episodes

    async def _model_turn(self, active: list[Episode], seed: int, s: Sampling) -> None:
        """One generate call per token budget (rows left with less room get fewer new tokens)."""
        budgets: dict[int, list[Episode]] = {}
        for e in active:
            budgets.setdefault(min(s.max_new_tokens, self.spec.max_tokens - len(e.tokens)), []).append(e)

        async def generate(budget: int, group: list[Episode]) -> None:
            out = await self.rollout.generate([e.prompt + e.tokens for e in group], n=1, seed=seed + budget,
                                              temperature=s.temperature, top_p=s.top_p, max_new_tokens=budget,
                                              greedy=s.greedy)
            for i, e in enumerate(group):
                n = int(out.lengths[i])
                ids = out.completion_ids[i, :n].tolist()
                e.turns.append(ids)
                e.tokens += ids
                e.sampled += [1.0] * n
                e.logprobs += out.logprobs[i, :n].tolist()
                v = int(out.versions[i])
                e.version = v if e.version is None else min(e.version, v)

        await asyncio.gather(*(generate(b, g) for b, g in budgets.items()))

    async def _environment_turn(self, active: list[Episode], last: bool) -> None:
        answers = await self.env.step([(e.id, self._text(e.turns[-1])) for e in active])
        for e, a in zip(active, answers):
            e.reward += a.reward
            e.info = a.info
            if a.done:
                e.done, e.end = True, "done"
                continue
            obs = self._observation(a.observation)
            if last:
                e.done, e.end = True, "turns"
            elif len(e.tokens) + len(obs) >= self.spec.max_tokens:
                e.done, e.end = True, "tokens"
            else:
                e.tokens += obs
                e.sampled += [0.0] * len(obs)
                e.logprobs += [0.0] * len(obs)

    def _text(self, ids: list[int]) -> str:
        return self.tok.decode(ids[:-1] if ids and ids[-1] == self.eos else ids, skip_special_tokens=False)

    def _observation(self, text: str) -> list[int]:
        """The environment's answer as tokens, tokenized on its own; text the tokenizer cannot represent exactly is
        an error (dropping characters silently would train on something the environment never said)."""
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if self.tok.decode(ids, skip_special_tokens=False) != text:
            raise Aborted(f"environment {self.spec.name or '(default)'}: its observation {text[:60]!r} does not "
                          f"survive the model's tokenizer (it decodes as "
                          f"{self.tok.decode(ids, skip_special_tokens=False)[:60]!r}); answer in characters the "
                          f"tokenizer knows")
        return ids


def as_rollouts(episodes: list[Episode], pad: int) -> Rollouts:
    """Episodes in the shape of one generate call's samples: the "completion" is everything after the prompt,
    ``loss_mask`` marks the model's own tokens, ``prompt_ids`` each episode's prompt."""
    width = max(1, max(len(e.tokens) for e in episodes))
    ids = torch.full((len(episodes), width), pad, dtype=torch.int64)
    logprobs = torch.zeros((len(episodes), width), dtype=torch.float32)
    mask = torch.zeros((len(episodes), width), dtype=torch.float32)
    for i, e in enumerate(episodes):
        k = len(e.tokens)
        ids[i, :k] = torch.tensor(e.tokens, dtype=torch.int64)
        logprobs[i, :k] = torch.tensor(e.logprobs, dtype=torch.float32)
        mask[i, :k] = torch.tensor(e.sampled, dtype=torch.float32)
    return Rollouts(ids, torch.tensor([len(e.tokens) for e in episodes], dtype=torch.int64), logprobs,
                    [e.end for e in episodes], torch.tensor([e.version or 0 for e in episodes], dtype=torch.int64),
                    loss_mask=mask, prompt_ids=[e.prompt for e in episodes])


def summary(episodes: list[Episode]) -> dict[str, float]:
    """Sums over the episodes (the caller divides by ``episodes``): turns, tokens, each numeric info key."""
    out = {"episodes": float(len(episodes)), "turns": float(sum(len(e.turns) for e in episodes)),
           "truncated": float(sum(e.end in ("turns", "tokens") for e in episodes))}
    for e in episodes:
        for k, v in e.info.items():
            out[k] = out.get(k, 0.0) + float(v)
    return out
