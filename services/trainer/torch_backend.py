"""Single-process torch trainer (CPU or one GPU): AdamW, gradient clipping, named losses."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from alignmesh.services.common.errors import FailedPrecondition, NotFound
from alignmesh.services.models.loading import load_causal_lm
from alignmesh.services.models.logprobs import token_logprobs
from alignmesh.services.sync import buckets as bk
from alignmesh.services.sync.group import GroupSpec
from alignmesh.services.sync.sender import PublishStats, SenderGroups, named_weights, publish
from alignmesh.services.trainer import checkpoint
from alignmesh.services.trainer.backend import (CheckpointInfo, Experience, LossSpec, TrainerStateInfo,
                                                check_step, move_experience, pair_objective, register,
                                                token_objective)

@register("torch")
class TorchTrainerBackend:
    def __init__(self, model_path: str, learning_rate: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0,
                 grad_clip: float = 1.0, seed: int = 0, device: str = "cpu"):
        torch.manual_seed(seed)
        self.device, self.seed = device, seed
        self.model_path = model_path
        self.model = self._load_model(model_path).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=learning_rate, betas=tuple(betas),
                                           weight_decay=weight_decay)
        self.grad_clip = grad_clip
        self.betas, self.weight_decay = tuple(betas), weight_decay
        self.step = 0
        self.weight_version = 0
        self.senders = SenderGroups(device)
        self._sync_buffers: dict = {}
        self.lock = threading.Lock()

    # -- training ---------------------------------------------------------------------------------------
    def train_step(self, batch: Experience, loss: LossSpec, learning_rate: float | None) -> tuple[int, dict]:
        check_step(batch, loss)
        with self.lock:
            if learning_rate is not None:
                for g in self.optimizer.param_groups:
                    g["lr"] = learning_rate
            batch = move_experience(batch, self.device)
            old = self._old_logprobs(batch, loss) if loss.name == "policy_gradient" and loss.epochs > 1 else None
            stats: dict[str, float] = {}
            for _ in range(max(1, loss.epochs)):
                stats = self._dpo_update(batch, loss) if loss.name == "dpo" else self._one_update(batch, loss, old)
            self.step += 1
            stats["lr"] = self.optimizer.param_groups[0]["lr"]
            return self.step, stats

    def _micro_batches(self, batch: Experience, size: int):
        size = size or batch.input_ids.shape[0]
        for i in range(0, batch.input_ids.shape[0], size):
            yield i, slice(i, i + size)

    def _old_logprobs(self, batch: Experience, loss: LossSpec) -> torch.Tensor:
        with torch.no_grad():
            parts = [token_logprobs(self.model, batch.input_ids[s], batch.attention_mask[s])
                     for _, s in self._micro_batches(batch, loss.micro_batch_size)]
        return torch.cat(parts)

    def _one_update(self, batch: Experience, loss: LossSpec, old: torch.Tensor | None) -> dict[str, float]:
        normalizer = batch.loss_mask.sum().clamp(min=1.0)
        totals: dict[str, float] = {}
        self.optimizer.zero_grad(set_to_none=True)
        for _, s in self._micro_batches(batch, loss.micro_batch_size):
            logp = token_logprobs(self.model, batch.input_ids[s], batch.attention_mask[s])
            value, stats = token_objective(logp, batch, s, loss, old, normalizer)
            value.backward()
            totals["loss"] = totals.get("loss", 0.0) + float(value.detach())
            for k, v in stats.items():  # stats are already divided by the full-batch normalizer
                totals[k] = totals.get(k, 0.0) + float(v)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        totals["grad_norm"] = float(grad_norm)
        totals["tokens"] = float(normalizer)
        return totals

    def _dpo_update(self, batch: Experience, loss: LossSpec) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        logp = token_logprobs(self.model, batch.input_ids, batch.attention_mask)
        value, stats, half = pair_objective(logp, batch, loss)
        value.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        return {"loss": float(value.detach()), **{k: float(v) for k, v in stats.items()},
                "grad_norm": float(grad_norm), "pairs": float(half)}

    # -- checkpoints ------------------------------------------------------------------------------------
    def save_checkpoint(self, path: str, export_hf: bool) -> CheckpointInfo:
        with self.lock:
            checkpoint.save(path, self.model, self.optimizer, {"step": self.step, "weight_version":
                            self.weight_version}, export_hf=export_hf, tokenizer_dir=self.model_path)
        return CheckpointInfo(path, self.step, self.weight_version)

    def load_checkpoint(self, path: str) -> CheckpointInfo:
        """A checkpoint directory restores everything; a plain HF model directory loads its weights with a
        fresh optimizer and step 0 (the weight version counter keeps counting up)."""
        if not (Path(path) / "state.json").is_file() and (Path(path) / "config.json").is_file():
            return self._load_hf(path)
        with self.lock:
            try:
                state = checkpoint.load(path, self.model, self.optimizer)
            except FileNotFoundError as exc:
                raise NotFound(f"path: {exc}") from None
            self.step, self.weight_version = int(state["step"]), int(state["weight_version"])
        return CheckpointInfo(path, self.step, self.weight_version)

    def _load_model(self, path: str) -> torch.nn.Module:
        return load_causal_lm(path, self.device)

    def _load_hf(self, path: str) -> CheckpointInfo:
        source = self._load_model(path)
        with self.lock, torch.no_grad():
            try:
                self.model.load_state_dict(source.state_dict())
            except RuntimeError as exc:
                raise FailedPrecondition(f"path: {path} does not match the trainer's architecture: {exc}") from None
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=self.betas,
                                               weight_decay=self.weight_decay)
            self.step = 0
        return CheckpointInfo(path, self.step, self.weight_version)

    def state(self) -> TrainerStateInfo:
        return TrainerStateInfo(self.step, self.weight_version, sum(p.numel() for p in self.model.parameters()),
                                str(self.device), float(self.optimizer.param_groups[0]["lr"]))

    # -- weight sync ------------------------------------------------------------------------------------
    def manifest(self) -> list[bk.Spec]:
        return bk.specs_of(named_weights(self.model))

    def join_sync_group(self, spec: GroupSpec) -> str:
        return self.senders.join(spec)

    def publish(self, group_id: str, version: int, bucket_bytes: int) -> PublishStats:
        group = self.senders.get(group_id)
        with self.lock:
            try:
                stats = publish(group, named_weights(self.model), version, bucket_bytes, self._sync_buffers)
            except Exception:
                self.senders.drop(group_id)
                raise
            self.weight_version = version
        return stats

