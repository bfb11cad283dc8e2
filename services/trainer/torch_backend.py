"""Single-process torch trainer (CPU or one GPU): AdamW, gradient clipping, named losses."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import torch

from alignmesh.services.common.errors import FailedPrecondition, NotFound
from alignmesh.services.compat.transformers import enable_activation_checkpointing
from alignmesh.services.models.loading import load_causal_lm
from alignmesh.services.models.lora import adapter_state_copy, adapter_weights_from, merged_weights, trainable
from alignmesh.services.models.logprobs import shared_prefix_logprobs, token_logprobs
from alignmesh.services.models.offload import Offload, SleepStats, module_tensors, optimizer_tensors
from alignmesh.services.sync import buckets as bk
from alignmesh.services.sync.group import GroupSpec
from alignmesh.services.sync.sender import FiniteSinceChecked, PublishStats, SenderGroups, named_weights, publish
from alignmesh.services.trainer import checkpoint
from alignmesh.services.trainer.backend import (
    CheckpointInfo,
    Experience,
    LossSpec,
    TrainerStateInfo,
    move_experience,
    register,
)
from alignmesh.services.trainer.step import resolve_loss, train_step


class TorchEngine:
    """The step loop's engine for one process: plain autograd, AdamW, ``clip_grad_norm_``."""

    data_rank, data_world = 0, 1

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float,
                 compute_dtype: torch.dtype = torch.float32, shared_prefix: bool = False):
        self.model, self.optimizer, self.grad_clip = model, optimizer, grad_clip
        self.compute_dtype = compute_dtype
        self.shared_prefix = shared_prefix
        self._norm = 0.0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                prompt_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Mixed precision when asked: matmuls in ``compute_dtype`` under autocast, weights, gradients and the
        optimizer in float32, log-probabilities from float32 logits. With ``shared_prefix`` the prompt that
        consecutive rows share (a group's) is computed once (``logprobs.shared_prefix_logprobs``)."""
        device = input_ids.device.type
        with torch.autocast(device, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32):
            if self.shared_prefix:
                return shared_prefix_logprobs(self.model, input_ids, attention_mask, prompt_lengths)
            return token_logprobs(self.model, input_ids, attention_mask)

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        loss.backward()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> bool:
        self._norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip))
        if not math.isfinite(self._norm):  # NaN/Inf somewhere: stepping would poison every weight
            self.optimizer.zero_grad(set_to_none=True)
            return False
        self.optimizer.step()
        return True

    def grad_norm(self) -> float:
        return self._norm

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


@register("torch")
class TorchTrainerBackend:
    def __init__(self, model_path: str, learning_rate: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0,
                 grad_clip: float = 1.0, seed: int = 0, device: str = "cpu", dtype: str = "float32",
                 gradient_checkpointing: bool = False, lora=None, offload_dir: str | None = None,
                 shared_prefix: bool = False):
        torch.manual_seed(seed)
        self.shared_prefix = shared_prefix
        self.device, self.seed = device, seed
        self.compute_dtype = getattr(torch, dtype)
        self.model_path, self.lora = model_path, lora
        self.model = self._load_model(model_path).train()
        self.initial_adapters = adapter_state_copy(self.model) if lora is not None else {}
        if gradient_checkpointing:
            enable_activation_checkpointing(self.model)
        self.optimizer = torch.optim.AdamW(trainable(self.model), lr=learning_rate, betas=tuple(betas),
                                           weight_decay=weight_decay)
        self.grad_clip = grad_clip
        self.betas, self.weight_decay = tuple(betas), weight_decay
        self.step = 0
        self.weight_version = 0
        self.senders = SenderGroups(device)
        self._sync_buffers: dict = {}
        self.lock = threading.Lock()
        self.offload = Offload(device, offload_dir)  # Sleep: weights and optimizer state out of the device
        self._layout, self._plan = 0, []  # the bucket size the parameters are laid out in (0: not laid out)
        self.finite = FiniteSinceChecked()  # lets a push skip its NaN/Inf pass (only steps changed the weights)

    # -- sleep and wake (colocated roles) -----------------------------------------------------------------
    def sleep(self, level: int = 1) -> SleepStats:
        """Offload the weights and the optimizer state (gradients are dropped between steps anyway)."""
        with self.lock:
            self.optimizer.zero_grad(set_to_none=True)
            self._sync_buffers.clear()  # the push's flat buckets: rebuilt by the next push
            return self.offload.put(module_tensors(self.model) + optimizer_tensors(self.optimizer))

    def wake(self) -> tuple[int, float]:
        with self.lock:
            self.finite.forget()
            return self.offload.take()

    def _lay_out(self, bucket_bytes: int) -> None:
        """Keep the pushed parameters in persistent flat buckets of this size (``buckets.lay_out``), so a push
        broadcasts the training storage itself instead of packing a copy; done again when the size changes or a
        Sleep took the storage away."""
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if self._layout != bucket_bytes or not all(bk.flat_view(b, dict(params)) is not None for b in self._plan):
            self._plan = bk.plan(bk.specs_of(params), bucket_bytes)
            bk.lay_out(params, self._plan)
            self._layout = bucket_bytes

    def _awake(self, what: str) -> None:
        if self.offload.asleep:
            raise FailedPrecondition(f"asleep: the trainer's memory is offloaded (Sleep); Wake it before {what}")

    # -- training ---------------------------------------------------------------------------------------
    model_kind = "policy"

    def train_step(self, batch: Experience, loss: LossSpec, learning_rate: float | None) -> tuple[int, dict]:
        resolve_loss(batch, loss, self.model_kind)
        with self.lock:
            self._awake("a train step")
            engine = self._engine()
            stats = train_step(engine, move_experience(batch, self.device), loss, learning_rate)
            self.step += 1
            if engine.lr() > 1.0:  # an update that large is not vouched for: the next push checks the weights
                self.finite.forget()
            stats.update(grad_norm=engine.grad_norm(), lr=engine.lr())
            return self.step, stats

    def _engine(self) -> "TorchEngine":
        return TorchEngine(self.model, self.optimizer, self.grad_clip, self.compute_dtype, self.shared_prefix)

    # -- checkpoints ------------------------------------------------------------------------------------
    def save_checkpoint(self, path: str, export_hf: bool) -> CheckpointInfo:
        with self.lock:
            self._awake("saving a checkpoint")
            checkpoint.save(path, self.model, self.optimizer, {"step": self.step, "weight_version":
                            self.weight_version}, export_hf=export_hf, tokenizer_dir=self.model_path)
        return CheckpointInfo(path, self.step, self.weight_version)

    def load_checkpoint(self, path: str) -> CheckpointInfo:
        """A checkpoint directory restores everything; a plain HF model directory loads its weights with a
        fresh optimizer and step 0 (the weight version counter keeps counting up)."""
        self._awake("loading a checkpoint")
        plain = (Path(path) / "config.json").is_file() or (Path(path) / "adapter_config.json").is_file()
        if not (Path(path) / "state.json").is_file() and plain:
            return self._load_hf(path)
        with self.lock:
            try:
                state = checkpoint.load(path, self.model, self.optimizer)
            except FileNotFoundError as exc:
                raise NotFound(f"path: {exc}") from None
            self.step, self.weight_version = int(state["step"]), int(state["weight_version"])
            self.finite.forget(optimizer_tensors(self.optimizer))
        return CheckpointInfo(path, self.step, self.weight_version)

    def _load_model(self, path: str) -> torch.nn.Module:
        return load_causal_lm(path, self.device, lora=getattr(self, "lora", None))

    def _load_hf(self, path: str) -> CheckpointInfo:
        with self.lock, torch.no_grad():
            if self.lora is not None:
                self._load_adapters(path)
            else:
                source = self._load_model(path)
                try:
                    self.model.load_state_dict(source.state_dict())
                except RuntimeError as exc:
                    raise FailedPrecondition(f"path: {path} does not match the trainer's architecture: "
                                             f"{exc}") from None
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer = torch.optim.AdamW(trainable(self.model), lr=lr, betas=self.betas,
                                               weight_decay=self.weight_decay)
            self.step = 0
            self.finite.forget(optimizer_tensors(self.optimizer))
        return CheckpointInfo(path, self.step, self.weight_version)

    def _load_adapters(self, path: str) -> None:
        """LoRA: a peft adapter directory sets the adapters; the base model's own directory resets them."""
        tensors = adapter_weights_from(self.model, path, self.model_path, self.initial_adapters)
        params = dict(self.model.named_parameters())
        for name, tensor in tensors.items():
            params[name].copy_(tensor)

    def state(self) -> TrainerStateInfo:
        return TrainerStateInfo(self.step, self.weight_version, sum(p.numel() for p in self.model.parameters()),
                                str(self.device), float(self.optimizer.param_groups[0]["lr"]))

    # -- weight sync ------------------------------------------------------------------------------------
    def manifest(self, dtype: torch.dtype | None = None, merged: bool = False) -> list[bk.Spec]:
        self._awake("a weight manifest")
        return bk.served_as(bk.specs_of(self._pushed(merged)), dtype)

    def _pushed(self, merged: bool) -> list[tuple[str, torch.Tensor]]:
        """What a push moves: the trainable weights (with LoRA the adapters), or with ``merged`` the base with the
        adapters merged in (for receivers that serve the plain model)."""
        return merged_weights(self.model) if merged else named_weights(self.model)

    def join_sync_group(self, spec: GroupSpec) -> str:
        return self.senders.join(spec)

    def publish(self, group_id: str, version: int, bucket_bytes: int,
                dtype: torch.dtype | None = None, merged: bool = False) -> PublishStats:
        group = self.senders.get(group_id)
        with self.lock:
            self._awake("publishing weights")
            if not merged:
                self._lay_out(bucket_bytes)
            pushed = self._pushed(merged)
            vouched = not merged and self.finite.known() and (dtype is None or all(
                t.dtype == dtype for _, t in pushed))  # sent as trained: no cast that could overflow
            try:
                stats = publish(group, pushed, version, bucket_bytes,
                                self._sync_buffers.setdefault(merged, {}), dtype, vouched)
            except FailedPrecondition:
                raise  # withdrawn (NaN/Inf weights): the transfer itself completed, the group is intact
            except Exception:
                self.senders.drop(group_id)
                raise
            self.weight_version = version
            if not merged:
                self.finite.checked()
        return stats

