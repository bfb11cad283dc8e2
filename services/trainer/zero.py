"""One rank of the DeepSpeed trainer: a ZeRO engine over the causal LM, and the work each rank does per command.

Rank 0 (inside the trainer service) and ranks 1..N-1 (``rank_worker`` processes) call the same methods in the
same order; rank 0 broadcasts each command first (see ``parallel_backend``). Data parallel: every rank takes a
contiguous shard of the batch's rows (a DPO pair stays on one rank). DeepSpeed averages gradients over ranks, so
each rank's loss is normalised by the *global* token (or pair) count divided by the world size; the sum over ranks
then equals the single-process loss of the whole batch.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from alignmesh.services.compat.deepspeed import forget_groups, launcher_env
from alignmesh.services.models.loading import load_causal_lm
from alignmesh.services.models.logprobs import token_logprobs
from alignmesh.services.sync import buckets as bk
from alignmesh.services.trainer.backend import Experience, LossSpec, pair_objective, token_objective
from alignmesh.services.trainer.ranks import RankSettings, micro_slices, select, shard_rows


@dataclass
class ZeroSettings(RankSettings):
    zero_stage: int = 2


class ZeroRank:
    def __init__(self, s: ZeroSettings):
        import deepspeed

        self.s = s
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        launcher_env(self.rank, self.rank, self.world)
        torch.manual_seed(s.seed)
        self.engine = self._engine(deepspeed, s.model_path)

    def _engine(self, deepspeed, path: str):
        model = load_causal_lm(path, self.s.device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=self.s.learning_rate, betas=tuple(self.s.betas),
                                weight_decay=self.s.weight_decay)
        cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
               "gradient_clipping": self.s.grad_clip, "zero_optimization": {"stage": self.s.zero_stage},
               "zero_allow_untested_optimizer": True, "steps_per_print": 2 ** 31}
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg, dist_init_required=False)
        return engine

    # -- training ---------------------------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for g in self.engine.optimizer.param_groups:
            g["lr"] = lr

    def lr(self) -> float:
        return float(self.engine.optimizer.param_groups[0]["lr"])

    def train(self, batch: Experience, loss: LossSpec, lr: float | None) -> dict[str, float]:
        """One optimizer step per epoch over this rank's shard; returns this rank's share of the batch stats
        (rank 0 sums the shares of all ranks)."""
        if lr is not None:
            self.set_lr(lr)
        paired = loss.name == "dpo"
        n = batch.input_ids.shape[0]
        self._dummy = (batch.input_ids[:1], batch.attention_mask[:1])  # the forward of an empty shard
        rows = shard_rows(n, self.rank, self.world, paired)
        shard = select(batch, rows)
        per_rank_max = math.ceil(n / self.world)
        size = 0 if paired else loss.micro_batch_size  # dpo: a shard's pairs are one micro-batch
        slices = micro_slices(shard.input_ids.shape[0], per_rank_max, size)
        old = None
        if loss.name == "policy_gradient" and loss.epochs > 1:
            with torch.no_grad():
                old = torch.cat([self._logprobs(shard, s) for s in slices])
        stats: dict[str, float] = {}
        for _ in range(max(1, loss.epochs)):
            if paired:
                stats = self._dpo_update(shard, loss, n // 2)
            else:
                stats = self._update(shard, loss, old, slices, float(batch.loss_mask.sum().clamp(min=1.0)))
        return stats

    def _logprobs(self, b: Experience, s: slice) -> torch.Tensor:
        ids, mask = b.input_ids[s], b.attention_mask[s]
        if ids.shape[0] == 0:  # still run a forward: ZeRO-3 ranks gather parameters together
            token_logprobs(self.engine, *self._dummy)
            return torch.zeros((0, b.input_ids.shape[1]))
        return token_logprobs(self.engine, ids, mask)

    def _update(self, b: Experience, loss: LossSpec, old: torch.Tensor | None, slices: list[slice],
                tokens: float) -> dict[str, float]:
        normalizer = tokens / self.world
        totals: dict[str, float] = {}
        for i, s in enumerate(slices):
            self.engine.set_gradient_accumulation_boundary(i == len(slices) - 1)
            value, stats = self._micro_loss(b, loss, old, s, normalizer)
            self.engine.backward(value)
            totals["loss"] = totals.get("loss", 0.0) + float(value.detach()) / self.world
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + float(v) / self.world
        self.engine.step()
        totals["tokens"] = tokens / self.world
        return totals

    def _micro_loss(self, b: Experience, loss: LossSpec, old, s: slice, normalizer: float):
        if b.input_ids[s].shape[0] == 0:  # an empty micro-batch still runs forward/backward, with zero weight
            return token_logprobs(self.engine, *self._dummy).sum() * 0.0, {}
        logp = token_logprobs(self.engine, b.input_ids[s], b.attention_mask[s])
        return token_objective(logp, b, s, loss, old, normalizer)

    def _dpo_update(self, b: Experience, loss: LossSpec, pairs: int) -> dict[str, float]:
        self.engine.set_gradient_accumulation_boundary(True)
        mine = b.input_ids.shape[0] // 2
        if mine == 0:
            value, stats = self._micro_loss(b, loss, None, slice(0, 0), 1.0)
        else:
            logp = token_logprobs(self.engine, b.input_ids, b.attention_mask)
            value, stats, _ = pair_objective(logp, b, loss)
            weight = mine / pairs  # this rank's share of the pairs
            value, stats = value * weight * self.world, {k: float(v) * weight for k, v in stats.items()}
        self.engine.backward(value)
        self.engine.step()
        return {"loss": float(value.detach()) / self.world, **stats, "pairs": float(mine)}

    def grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else 0.0

    # -- parameters -------------------------------------------------------------------------------------
    def params(self) -> list[tuple[str, torch.nn.Parameter]]:
        return list(self.engine.module.named_parameters())

    def names(self) -> list[str]:
        return [name for name, _ in self.params()]

    def specs(self) -> list[bk.Spec]:
        """Full (unpartitioned) shapes in a stable order; ZeRO-3 keeps them in ``ds_shape``."""
        return [bk.Spec(name, p.dtype, tuple(getattr(p, "ds_shape", p.shape))) for name, p in self.params()]

    @contextlib.contextmanager
    def gathered(self, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
        """Full tensors of ``names`` on every rank for the duration (a collective under ZeRO-3; every rank must
        enter with the same names)."""
        params = dict(self.params())
        chosen = [params[n] for n in names]
        if self.s.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(chosen, modifier_rank=None):
                yield {n: p.detach() for n, p in zip(names, chosen)}
        else:
            yield {n: p.detach() for n, p in zip(names, chosen)}

    def gather_buckets(self, bucket_bytes: int) -> Iterator[tuple[bk.Bucket, dict[str, torch.Tensor]]]:
        """Walk the weight-sync plan, one bucket's full parameters at a time."""
        for bucket in bk.plan(self.specs(), bucket_bytes):
            with self.gathered([s.name for s in bucket.specs]) as tensors:
                yield bucket, tensors

    # -- checkpoints ------------------------------------------------------------------------------------
    def save_state(self, directory: str) -> None:
        """Every rank writes its optimizer partition (DeepSpeed's layout) under ``directory``."""
        self.engine.save_checkpoint(directory, tag="state", save_latest=False)
        dist.barrier()

    def load_state(self, directory: str) -> None:
        path, _ = self.engine.load_checkpoint(directory, tag="state", load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
        if path is None:
            raise FileNotFoundError(f"{directory} holds no DeepSpeed state (tag 'state')")
        dist.barrier()

    def reload(self, path: str) -> None:
        """Fresh engine (and optimizer) on the weights of a plain HF model directory."""
        import deepspeed

        lr = self.lr()
        self.engine.destroy()
        self.engine = self._engine(deepspeed, path)
        self.set_lr(lr)

    def close(self) -> None:
        self.engine.destroy()

    @staticmethod
    def forget() -> None:
        """After the process group is destroyed: drop DeepSpeed's cached groups (a new trainer may follow)."""
        forget_groups()
