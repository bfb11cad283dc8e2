"""One rank of the DeepSpeed trainer: a ZeRO engine over the causal LM, and the work each rank does per command.

Rank 0 (inside the trainer service) and ranks 1..N-1 (``rank_worker`` processes) call the same methods in the
same order; rank 0 broadcasts each command first (see ``parallel_backend``). Training is the shared step loop
(``step.train_step``, data parallel over all ranks) over this class's engine methods.
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
from alignmesh.services.trainer.backend import Experience, LossSpec
from alignmesh.services.trainer.ranks import RankSettings
from alignmesh.services.trainer.step import train_step


@dataclass
class ZeroSettings(RankSettings):
    zero_stage: int = 2
    # "bfloat16": DeepSpeed's own mixed precision (bf16 weights and compute, fp32 master weights and optimizer
    # state in its optimizer wrapper); the push then sends bf16, the dtype the model is held in.
    dtype: str = "float32"


class ZeroRank:
    def __init__(self, s: ZeroSettings):
        import deepspeed

        self.s = s
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.data_rank, self.data_world = self.rank, self.world
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
        if self.s.dtype == "bfloat16":
            cfg["bf16"] = {"enabled": True}
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg, dist_init_required=False)
        return engine

    # -- training ---------------------------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for g in self.engine.optimizer.param_groups:
            g["lr"] = lr

    def lr(self) -> float:
        return float(self.engine.optimizer.param_groups[0]["lr"])

    def train(self, batch: Experience, loss: LossSpec, lr: float | None) -> dict[str, float]:
        """One optimizer step per epoch over this rank's shard (the step loop); returns this rank's share of the
        batch stats (rank 0 sums the shares of all ranks)."""
        return train_step(self, batch, loss, lr)

    # the step loop's engine: DeepSpeed averages gradients over ranks, clips and steps
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths=None) -> torch.Tensor:
        return token_logprobs(self.engine, input_ids, attention_mask)

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.backward(loss)

    def zero_grad(self) -> None:
        pass  # engine.step() clears the gradients it applied

    def step(self) -> bool:
        self.engine.step()  # DeepSpeed itself skips a step whose global gradient norm is not finite
        return math.isfinite(self.grad_norm())

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
