"""One rank of the Megatron-core trainer: tensor parallel over ``tensor_parallel`` ranks, data parallel over the
rest (``processes / tensor_parallel`` replicas of the model, each on its own shard of the batch).

Same interface and command order as ``zero.ZeroRank`` (driven by ``parallel_backend``). The ranks of one
tensor-parallel group see the same rows; data-parallel replicas average their gradients with an all-reduce before
the optimizer step, and losses are normalised by the global token count so the sum over replicas equals the
single-process loss. Gradient clipping uses the global norm over all shards, as the single-process trainer does.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from alignmesh.services.compat.megatron import apply_cpu_shims
from alignmesh.services.sync import buckets as bk
from alignmesh.services.trainer.backend import Experience, LossSpec
from alignmesh.services.trainer.megatron_model import (
    Shape,
    build_gpt,
    causal_mask,
    hf_from_shards,
    megatron_shard,
    replicated_param,
    sources,
)
from alignmesh.services.trainer.ranks import RankSettings
from alignmesh.services.trainer.step import train_step


@dataclass
class MegatronSettings(RankSettings):
    tensor_parallel: int = 1


def hf_weights(path: str) -> tuple[dict[str, torch.Tensor], object]:
    from transformers import AutoConfig

    from alignmesh.services.models.loading import load_causal_lm

    model = load_causal_lm(path, "cpu")
    return {n: p.detach() for n, p in model.named_parameters()}, AutoConfig.from_pretrained(path)


class MegatronRank:
    def __init__(self, s: MegatronSettings):
        from megatron.core import parallel_state as ps
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        apply_cpu_shims()
        self.s, self.ps = s, ps
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        ps.initialize_model_parallel(tensor_model_parallel_size=s.tensor_parallel)
        self.tp_rank, self.dp_rank = ps.get_tensor_model_parallel_rank(), ps.get_data_parallel_rank()
        self.dp = self.world // s.tensor_parallel
        self.data_rank, self.data_world = self.dp_rank, self.dp
        torch.manual_seed(s.seed)
        get_cuda_rng_tracker().reset()
        get_cuda_rng_tracker().add("model-parallel-rng", s.seed + 2718 + self.tp_rank)  # Megatron's convention
        hf, config = hf_weights(s.model_path)
        self.shape = Shape.of(config)
        self.shape.check(s.tensor_parallel)
        self.hf_names = list(hf)
        self.hf_specs = bk.specs_of(list(hf.items()))
        self.model = build_gpt(self.shape, s.tensor_parallel).to(s.device)
        self._load_hf(hf)
        self._last_norm = 0.0

    def _load_hf(self, hf: dict[str, torch.Tensor]) -> None:
        mine = megatron_shard(hf, self.shape, self.s.tensor_parallel, self.tp_rank)
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(mine[name])
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.s.learning_rate,
                                           betas=tuple(self.s.betas), weight_decay=self.s.weight_decay)

    # -- forward ----------------------------------------------------------------------------------------
    def logprobs(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``token_logprobs`` of the HF model, from vocab-parallel logits (a collective over the TP group)."""
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        width = ids.shape[1]
        pos = torch.arange(width, device=ids.device).unsqueeze(0).expand_as(ids)
        logits = self.model(ids, pos, causal_mask(width).to(ids.device))  # [B, T, V / tp]
        nll = vocab_parallel_cross_entropy(logits[:, :-1].float().contiguous(), ids[:, 1:].contiguous())
        out = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
        out[:, 1:] = -nll * mask[:, 1:].to(nll.dtype)
        return out

    # -- training ---------------------------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def train(self, batch: Experience, loss: LossSpec, lr: float | None) -> dict[str, float]:
        """The step loop, data parallel over the ``dp`` replicas; TP ranks hold the same numbers: count them once."""
        stats = train_step(self, batch, loss, lr)
        return stats if self.tp_rank == 0 else {}

    # the step loop's engine
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths=None) -> torch.Tensor:
        return self.logprobs(input_ids, attention_mask)

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        loss.backward()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> bool:
        return self._step()

    def _step(self) -> bool:
        named = [(n, p) for n, p in self.model.named_parameters() if p.grad is not None]
        if self.dp > 1:
            group = self.ps.get_data_parallel_group()
            for _, p in named:
                dist.all_reduce(p.grad, group=group)
                p.grad.div_(self.dp)
        self._last_norm = self._clip(named)
        if not math.isfinite(self._last_norm):  # the same global norm on every rank: all skip together
            self.optimizer.zero_grad(set_to_none=True)
            return False
        self.optimizer.step()
        return True

    def _clip(self, named: list[tuple[str, torch.nn.Parameter]]) -> float:
        """Global gradient norm over the TP shards (replicated tensors counted once), then clip like
        ``torch.nn.utils.clip_grad_norm_``."""
        sharded = sum(float(p.grad.pow(2).sum()) for n, p in named if not replicated_param(n))
        replicated = sum(float(p.grad.pow(2).sum()) for n, p in named if replicated_param(n))
        total = torch.tensor([sharded], dtype=torch.float64, device=self.s.device)  # NCCL needs it on the GPU
        dist.all_reduce(total, group=self.ps.get_tensor_model_parallel_group())
        norm = math.sqrt(float(total) + replicated)
        coef = self.s.grad_clip / (norm + 1e-6)
        if coef < 1.0:
            for _, p in named:
                p.grad.mul_(coef)
        return norm

    def grad_norm(self) -> float:
        return self._last_norm

    # -- parameters -------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.hf_names)

    def specs(self) -> list[bk.Spec]:
        return list(self.hf_specs)

    @contextlib.contextmanager
    def gathered(self, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
        """Full HF tensors of ``names``: every rank all-gathers the Megatron shards they come from over its
        tensor-parallel group (a collective: every rank enters with the same names)."""
        params = dict(self.model.named_parameters())
        group = self.ps.get_tensor_model_parallel_group()
        needed = sorted({src for n in names for src in sources(n)})
        shards: dict[str, list[torch.Tensor]] = {}
        for src in needed:
            local = params[src].detach().contiguous()
            parts = [torch.empty_like(local) for _ in range(self.s.tensor_parallel)]
            dist.all_gather(parts, local, group=group)
            shards[src] = parts
        yield hf_from_shards(shards, self.shape, names)

    def gather_buckets(self, bucket_bytes: int):
        for bucket in bk.plan(self.hf_specs, bucket_bytes):
            with self.gathered([s.name for s in bucket.specs]) as tensors:
                yield bucket, tensors

    # -- checkpoints ------------------------------------------------------------------------------------
    def save_state(self, directory: str) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()},
                   Path(directory) / f"rank{self.rank:04d}.pt")
        dist.barrier()

    def load_state(self, directory: str) -> None:
        state = torch.load(Path(directory) / f"rank{self.rank:04d}.pt", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        dist.barrier()

    def reload(self, path: str) -> None:
        lr = self.lr()
        self._load_hf(hf_weights(path)[0])
        self.set_lr(lr)

    def close(self) -> None:
        self.ps.destroy_model_parallel()

    @staticmethod
    def forget() -> None:
        pass
