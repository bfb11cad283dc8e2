"""Reference model: per-token log-probabilities of given sequences under frozen weights."""

from __future__ import annotations

from typing import Protocol

import torch

from alignmesh.services.models.loading import load_causal_lm
from alignmesh.services.models.lora import adapter_state_copy, adapter_weights_from
from alignmesh.services.models.logprobs import shared_prefix_logprobs
from alignmesh.services.models.offload import SleepStats
from alignmesh.services.sync.group import GroupSpec, SyncGroup
from alignmesh.services.sync.receiver import WeightReceiver


class ReferenceBackend(Protocol):
    receiver: WeightReceiver

    def logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 prompt_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, int]: ...

    def sleep(self, level: int = 1) -> SleepStats: ...

    def wake(self) -> tuple[int, float]: ...

    def join_sync_group(self, spec: GroupSpec) -> str: ...

    def load_weights(self, path: str, version: int) -> int: ...


class TorchReferenceBackend:
    def __init__(self, model_path: str, device: str = "cpu", micro_batch_size: int = 512, dtype: str = "float32",
                 lora=None, offload_dir: str | None = None, shared_prefix: bool = True):
        self.device, self.dtype, self.lora, self.model_path = device, dtype, lora, model_path
        self.model = load_causal_lm(model_path, device, dtype, lora).eval()
        self.initial_adapters = adapter_state_copy(self.model) if lora is not None else {}
        self.micro_batch_size = micro_batch_size
        self.receiver = WeightReceiver(self.model)
        self.offload_dir = offload_dir
        self.shared_prefix = shared_prefix

    def sleep(self, level: int = 1):
        """Offload the weights (the KV cache lives only within a request): ``services/models/offload.py``."""
        return self.receiver.sleep(self.offload_dir)

    def wake(self) -> tuple[int, float]:
        return self.receiver.wake()

    def join_sync_group(self, spec: GroupSpec) -> str:
        group = SyncGroup(spec, self.device)
        self.receiver.join(group)
        return group.backend

    def logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 prompt_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """[B, T] log-probabilities (``token_logprobs``); with ``prompt_lengths`` [B] and ``shared_prefix`` the
        prompt that consecutive rows share is computed once (``shared_prefix_logprobs``: the same values up to
        float rounding)."""
        outs = []
        lengths = prompt_lengths if self.shared_prefix else None
        with self.receiver.serving() as version, torch.inference_mode():
            for i in range(0, input_ids.shape[0], self.micro_batch_size):
                rows = slice(i, i + self.micro_batch_size)
                ids, mask = input_ids[rows].to(self.device), attention_mask[rows].to(self.device)
                part = None if lengths is None else lengths[rows].to(self.device)
                outs.append(shared_prefix_logprobs(self.model, ids, mask, part).cpu())
        return torch.cat(outs), version

    def load_weights(self, path: str, version: int) -> int:
        """Serve a model directory's weights as ``version`` (checked against this model's layout first); with LoRA a
        peft adapter directory's adapters (or, from the base model's directory, the initial ones)."""
        if self.lora is not None:
            tensors = adapter_weights_from(self.model, path, self.model_path, self.initial_adapters)
            return self.receiver.adopt(tensors, version)
        source = load_causal_lm(path, self.device, self.dtype)
        return self.receiver.adopt({n: p.detach() for n, p in source.named_parameters()}, version)
