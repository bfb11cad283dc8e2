"""Multi-process trainers behind one trainer service: DeepSpeed ZeRO (data parallel) and Megatron-core (tensor and
data parallel).

The service process is rank 0. It starts ranks 1..N-1 (``python -m alignmesh.services.trainer.rank_worker``),
forms the default ``torch.distributed`` group with them (gloo on CPU, NCCL on GPU; every collective carries
``dist_timeout_s``), and for every RPC that needs all ranks broadcasts a command on a separate gloo command group,
then does its own part. The per-rank work lives in a *rank* class (``zero.ZeroRank``, ``megatron_rank.MegatronRank``)
with one interface, so this file is engine-blind. Weight sync gathers full parameters one bucket at a time (a
collective) and sends them over the side channel exactly as the single-process trainer does. Checkpoints hold the
engine's per-rank state (``ranks/``) beside consolidated HF weights (``model.safetensors``, optional ``hf/``),
written atomically.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from alignmesh.services.common import threads as thread_budget
from alignmesh.services.common.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from alignmesh.services.common.registry import load_plugins
from alignmesh.services.sync import buckets as bk
from alignmesh.services.sync.group import GroupSpec
from alignmesh.services.sync.sender import PublishStats, SenderGroups, publish_buckets
from alignmesh.services.trainer import checkpoint
from alignmesh.services.trainer.backend import (
    CheckpointInfo,
    Experience,
    LossSpec,
    TrainerStateInfo,
    move_experience,
    register,
)
from alignmesh.services.trainer.step import merge_stats, resolve_loss

log = logging.getLogger("alignmesh.trainer.parallel")
IDLE_TIMEOUT = dt.timedelta(days=7)  # how long workers wait for the next command (a trainer may idle)
RANK_KINDS = {  # kind -> (module, settings class, rank class)
    "zero": ("alignmesh.services.trainer.zero", "ZeroSettings", "ZeroRank"),
    "megatron": ("alignmesh.services.trainer.megatron_rank", "MegatronSettings", "MegatronRank"),
}


def make_rank(kind: str, settings: dict):
    module, settings_cls, rank_cls = RANK_KINDS[kind]
    load_plugins(settings.get("plugins", ()), "trainer.plugins")  # user losses, registered in every rank
    mod = importlib.import_module(module)
    return getattr(mod, rank_cls)(getattr(mod, settings_cls)(**settings))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_device(device: str, rank: int) -> str:
    return f"cuda:{rank}" if device == "cuda" else device


def init_group(init_method: str, rank: int, world: int, device: str, timeout_s: float):
    """The default group for the engine's collectives and the command group (gloo) for rank 0's commands."""
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank_device(device, rank))
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                            timeout=dt.timedelta(seconds=timeout_s))
    return dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)


class ParallelTrainerBackend:
    """Rank 0 of a multi-process trainer; ``kind`` picks the per-rank engine (see RANK_KINDS)."""

    def __init__(self, kind: str, settings: dict, processes: int, device: str, dist_timeout_s: float,
                 threads: int = 0):
        self.kind, self.world, self.device = kind, processes, device
        self.model_path = settings["model_path"]
        self.settings = {**settings, "device": rank_device(device, 0)}
        self.threads = threads or thread_budget.share(processes)
        thread_budget.apply(self.threads)
        self.step, self.weight_version = 0, 0
        self.senders = SenderGroups(self.settings["device"])
        self._sync_buffers: dict = {}
        self.lock = threading.Lock()
        self.broken = ""
        port = free_port()
        self.workers = {r: self._spawn(r, port, dist_timeout_s) for r in range(1, processes)}
        self.commands = init_group(f"tcp://127.0.0.1:{port}", 0, processes, device, dist_timeout_s)
        self.rank = make_rank(kind, self.settings)
        log.info("%s trainer: %d ranks, %d threads each", kind, processes, self.threads)

    def _spawn(self, rank: int, port: int, timeout_s: float) -> subprocess.Popen:
        settings = {**self.settings, "device": rank_device(self.device, rank)}
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        return subprocess.Popen([sys.executable, "-m", "alignmesh.services.trainer.rank_worker",
                                 "--kind", self.kind, "--rank", str(rank), "--world", str(self.world),
                                 "--init-method", f"tcp://127.0.0.1:{port}", "--timeout-s", str(timeout_s),
                                 "--threads", str(self.threads), "--settings", json.dumps(settings)], env=env)

    def _send(self, *command) -> None:
        """Tell ranks 1..N-1 what to do next (caller holds the lock); a dead rank breaks the trainer."""
        if self.broken:
            raise FailedPrecondition(f"trainer: {self.broken}; restart the trainer service")
        dead = [str(r) for r, w in self.workers.items() if w.poll() is not None]
        if dead:
            self.broken = f"rank(s) {', '.join(dead)} exited"
            raise Aborted(f"trainer: {self.broken}; restart the trainer service")
        try:
            dist.broadcast_object_list([command], src=0, group=self.commands)
        except Exception as exc:
            self.broken = f"cannot reach the other ranks ({exc})"
            raise Aborted(f"trainer: {self.broken}") from exc

    def _collective(self, what: str, fn, *args):
        """Rank 0's own part of a command; a failed collective leaves the ranks out of step: the trainer is
        marked broken and says so on every later call."""
        try:
            return fn(*args)
        except Exception as exc:
            self.broken = f"{what} failed on rank 0: {exc}"
            raise Aborted(f"trainer: {self.broken}") from exc

    # -- training ---------------------------------------------------------------------------------------
    def train_step(self, batch: Experience, loss: LossSpec, learning_rate: float | None) -> tuple[int, dict]:
        resolve_loss(batch, loss, "policy")
        batch = move_experience(batch, "cpu")  # what is broadcast to the other ranks
        with self.lock:
            self._send("train", batch, loss, learning_rate)
            stats = self._collective("train step", self._train, batch, loss, learning_rate)
            self.step += 1
        return self.step, stats

    def _train(self, batch: Experience, loss: LossSpec, lr: float | None) -> dict[str, float]:
        mine = self.rank.train(move_experience(batch, self.settings["device"]), loss, lr)
        shares: list = [None] * self.world
        dist.gather_object(mine, shares, dst=0)
        stats: dict[str, float] = {}
        for share in shares:
            merge_stats(stats, share)
        stats.update(grad_norm=self.rank.grad_norm(), lr=self.rank.lr(), ranks=float(self.world))
        return stats

    # -- checkpoints ------------------------------------------------------------------------------------
    def save_checkpoint(self, path: str, export_hf: bool) -> CheckpointInfo:
        with self.lock, checkpoint.atomic_dir(path) as tmp:
            self._send("save", str(tmp / "ranks"))
            self._collective("checkpoint", self._save, tmp, export_hf)
        return CheckpointInfo(path, self.step, self.weight_version)

    def _save(self, tmp: Path, export_hf: bool) -> None:
        self.rank.save_state(str(tmp / "ranks"))
        with self.rank.gathered(self.rank.names()) as full:
            cpu = {n: t.detach().cpu().contiguous() for n, t in full.items()}
        save_file(cpu, str(tmp / "model.safetensors"))
        if export_hf:
            checkpoint.write_hf_files(tmp / "hf", cpu, self.model_path)
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": self.step, "weight_version": self.weight_version,
                                                    "engine": self.kind, "world_size": self.world}, indent=2))

    def load_checkpoint(self, path: str) -> CheckpointInfo:
        """A checkpoint of this backend restores everything; a plain HF model directory loads its weights with a
        fresh optimizer and step 0 (the weight version keeps counting up)."""
        root = Path(path)
        with self.lock:
            if not (root / "state.json").is_file() and (root / "config.json").is_file():
                self._send("reload", path)
                self._collective("reload", self.rank.reload, path)
                self.step = 0
                return CheckpointInfo(path, self.step, self.weight_version)
            if not (root / "ranks").is_dir():
                raise NotFound(f"path: {path} holds no {self.kind} trainer checkpoint (no ranks/ directory)")
            state = json.loads((root / "state.json").read_text())
            if state.get("world_size") != self.world or state.get("engine") != self.kind:
                raise FailedPrecondition(f"path: written by a {state.get('engine')} trainer of "
                                         f"{state.get('world_size')} ranks, this is a {self.kind} trainer of "
                                         f"{self.world}; start the trainer with the same layout")
            self._send("load", str(root / "ranks"))
            self._collective("checkpoint load", self.rank.load_state, str(root / "ranks"))
            torch.set_rng_state(torch.load(root / "rng.pt", weights_only=True)["torch"])
            self.step, self.weight_version = int(state["step"]), int(state["weight_version"])
        return CheckpointInfo(path, self.step, self.weight_version)

    def state(self) -> TrainerStateInfo:
        n = sum(s.numel for s in self.rank.specs())
        return TrainerStateInfo(self.step, self.weight_version, n, f"{self.device} x{self.world}", self.rank.lr())

    # -- weight sync ------------------------------------------------------------------------------------
    def manifest(self, dtype: torch.dtype | None = None) -> list[bk.Spec]:
        self._check_sync_dtype(dtype)
        return self.rank.specs()

    def _check_sync_dtype(self, dtype: torch.dtype | None) -> None:
        if dtype is not None and any(s.dtype != dtype for s in self.rank.specs() if s.dtype.is_floating_point):
            raise FailedPrecondition(f"dtype: the {self.kind} trainer pushes its weights as trained "
                                     f"({self.rank.specs()[0].dtype}); serve rollout/reference in that dtype, or "
                                     f"train with trainer.backend torch to push {dtype}")

    def join_sync_group(self, spec: GroupSpec) -> str:
        return self.senders.join(spec)

    def publish(self, group_id: str, version: int, bucket_bytes: int,
                dtype: torch.dtype | None = None) -> PublishStats:
        self._check_sync_dtype(dtype)
        group = self.senders.get(group_id)
        with self.lock:
            self._send("gather", bucket_bytes)
            buckets = self.rank.gather_buckets(bucket_bytes)
            try:
                stats = publish_buckets(group, buckets, version, self._sync_buffers)
            except FailedPrecondition:
                raise  # withdrawn (NaN/Inf weights): every bucket was sent, the group is intact
            except Exception:
                self._collective("weight gather", _drain, buckets)  # keep the ranks in step
                self.senders.drop(group_id)
                raise
            self.weight_version = version
        return stats

    def close(self) -> None:
        with self.lock:
            if not self.broken:
                self._send("stop")
            self.rank.close()
            self.senders.close()
        for w in self.workers.values():
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
        dist.destroy_process_group()
        self.rank.forget()


@register("deepspeed")
def deepspeed_trainer(model_path: str, learning_rate: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0,
                      grad_clip: float = 1.0, seed: int = 0, device: str = "cpu", processes: int = 2,
                      zero_stage: int = 2, dist_timeout_s: float = 300.0, threads: int = 0,
                      plugins: tuple[str, ...] = (), dtype: str = "float32", **unused) -> ParallelTrainerBackend:
    """DeepSpeed ZeRO (stage 0-3), data parallel over ``processes`` ranks; ``dtype`` bfloat16: its bf16 mode."""
    if zero_stage not in (0, 1, 2, 3):
        raise InvalidArgument("trainer.zero_stage", f"must be 0, 1, 2 or 3, got {zero_stage}")
    if dtype not in ("float32", "bfloat16"):
        raise InvalidArgument("trainer.dtype", f"the deepspeed trainer runs float32 or bfloat16, got {dtype}")
    settings = dict(model_path=model_path, zero_stage=zero_stage, learning_rate=learning_rate, betas=list(betas),
                    weight_decay=weight_decay, grad_clip=grad_clip, seed=seed, plugins=list(plugins), dtype=dtype)
    return ParallelTrainerBackend("zero", settings, processes, device, dist_timeout_s, threads)


@register("megatron")
def megatron_trainer(model_path: str, learning_rate: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0,
                     grad_clip: float = 1.0, seed: int = 0, device: str = "cpu", processes: int = 2,
                     tensor_parallel: int = 2, dist_timeout_s: float = 300.0, threads: int = 0,
                     plugins: tuple[str, ...] = (), **unused) -> ParallelTrainerBackend:
    """Megatron-core GPTModel: tensor parallel over ``tensor_parallel`` ranks, data parallel over the rest."""
    if tensor_parallel < 1 or processes % tensor_parallel:
        raise InvalidArgument("trainer.tensor_parallel", f"must divide trainer.processes ({processes}), "
                                                         f"got {tensor_parallel}")
    settings = dict(model_path=model_path, tensor_parallel=tensor_parallel, learning_rate=learning_rate,
                    betas=list(betas), weight_decay=weight_decay, grad_clip=grad_clip, seed=seed,
                    plugins=list(plugins))
    return ParallelTrainerBackend("megatron", settings, processes, device, dist_timeout_s, threads)


def _drain(buckets) -> None:
    for _ in buckets:
        pass

