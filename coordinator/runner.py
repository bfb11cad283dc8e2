"""Runs one job: reset every role to the initial weights (or restore the last checkpoint of an interrupted run),
optional warm start, the flow, periodic resumable checkpoints, the artifacts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from alignmesh.coordinator.artifacts import RunDir
from alignmesh.coordinator.config import JobConfig, parse_job_config
from alignmesh.coordinator.data import (PromptSampler, Splits, addition_splits, calculator_splits, load_hf_disk,
                                        load_jsonl, load_parquet)
from alignmesh.coordinator.flows.base import Cancelled, Control, FlowContext
from alignmesh.coordinator.flows.registry import resolve
from alignmesh.coordinator.flows.sft import SFT, SFTParams
from alignmesh.coordinator.colocation import Turns
from alignmesh.coordinator.environment_pool import environment_pool
from alignmesh.coordinator.handles import make_pools
from alignmesh.coordinator.trackers import open_trackers
from alignmesh.coordinator.weights import WeightSync
from alignmesh.protos.common.v1 import weights_pb2
from alignmesh.protos.trainer.v1 import trainer_pb2
from alignmesh.services.common import durable
from alignmesh.services.common.config import from_dict, to_dict
from alignmesh.services.common.errors import ConfigError
from alignmesh.services.models.light_tokenizer import load_light_tokenizer
from alignmesh.services.models.tiny import ensure_model

if TYPE_CHECKING:
    from alignmesh.coordinator.jobs import JobManager
    from alignmesh.coordinator.store import JobRecord


def load_splits(cfg: JobConfig) -> Splits:
    d = cfg.dataset
    if d.kind == "addition":
        return addition_splits(d.seed, test_size=d.test_size, dev_size=d.dev_size)
    if d.kind == "calculator":
        return calculator_splits(d.seed, d.tool_traces, test_size=d.test_size, dev_size=d.dev_size)
    keys = (d.prompt_key, d.answer_key)
    if d.kind in ("jsonl", "parquet"):
        load = load_jsonl if d.kind == "jsonl" else load_parquet
        train = load(d.train, "dataset.train", keys)
        test = load(d.test, "dataset.test", keys) if d.test else train[: d.test_size]
        return Splits(train=train, test=test, dev=test[: d.dev_size])
    train = load_hf_disk(d.path, "train", keys=keys)
    test = load_hf_disk(d.path, "test", keys=keys)
    return Splits(train=train, test=test, dev=test[: d.dev_size])


async def _start_version(ctx: FlowContext) -> int:
    versions = [(await ctx.trainer.state()).weight_version]
    for pool in (ctx.rollout, ctx.reference):
        for ep in pool.healthy():
            try:
                v = await ep.stub.GetWeightVersion(weights_pb2.GetWeightVersionRequest(), timeout=30,
                                                   metadata=ep.metadata)
            except grpc.aio.AioRpcError as exc:  # down: it is re-admitted (and brought up to date) later
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                ep.healthy = False
                continue
            versions.append(v.version)
    return max(versions)


async def _load(ctx: FlowContext, path: str) -> None:
    await ctx.trainer.call("LoadCheckpoint", trainer_pb2.LoadCheckpointRequest(path=path))
    ctx.version = max(ctx.version, await _start_version(ctx))


async def _warm_start(ctx: FlowContext, run_dir: str) -> None:
    ws = ctx.config.warm_start
    params = SFTParams(ws.batch_size, ws.learning_rate, ws.target_dev_accuracy, ws.eval_every)
    main_params, main_sampler = ctx.params, ctx.sampler
    ctx.stage, ctx.params = "sft", params
    ctx.sampler = PromptSampler(ctx.data.train, seed=ctx.config.seed + 1)
    await SFT(max_steps=ws.max_steps).run(ctx)
    # The warmed-up model becomes the reference and the new start; the main stage gets a fresh optimizer.
    await ctx.trainer.save_checkpoint(f"{run_dir}/sft", export_hf=True)
    # A LoRA trainer exports its adapter beside the merged model: the roles keep their base and take the adapter.
    start = f"{run_dir}/sft/adapter" if Path(f"{run_dir}/sft/adapter").is_dir() else f"{run_dir}/sft/hf"
    await _load(ctx, start)
    if ctx.critic is not None:
        await ctx.critic.call("LoadCheckpoint", trainer_pb2.LoadCheckpointRequest(path=f"{run_dir}/sft/hf"))
    await ctx.push_weights(reference=True)
    ctx.reference.source = (start, ctx.version)
    ctx.stage, ctx.params, ctx.sampler = "main", main_params, main_sampler


class Checkpointer:
    """``checkpoints/step-N`` (trainer state, written atomically by the trainer), then ``latest.json`` (the
    coordinator's cursor, version, knobs), replaced atomically: a crash at any point leaves a usable pair."""

    def __init__(self, ctx: FlowContext, run_dir: str, keep: int = 2):
        self.ctx, self.dir, self.keep = ctx, Path(run_dir) / "checkpoints", keep
        self.accuracy_before = 0.0

    def latest(self) -> dict | None:
        path = self.dir / "latest.json"
        return json.loads(path.read_text()) if path.is_file() else None

    async def save(self, step: int) -> None:
        ctx = self.ctx
        path = self.dir / f"step-{step:06d}"
        await ctx.trainer.save_checkpoint(str(path))
        cursor = ctx.sampler.cursor if ctx.trained_cursor is None else ctx.trained_cursor  # not the lookahead's
        state = {"step": step, "path": str(path), "cursor": cursor, "version": ctx.version,
                 "knobs": ctx.control.knobs, "accuracy_before": self.accuracy_before}
        durable.write_text(self.dir / "latest.json", json.dumps(state))  # fsynced, renamed, directory fsynced
        for old in sorted(self.dir.glob("step-*"))[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        ctx.emit("checkpoint", {"stage": ctx.stage, "step": step, "message": f"checkpoint {path}"})

    async def restore(self, state: dict, run_dir: str) -> None:
        """Reference back to the warm-start model (if any), trainer and rollouts to the checkpoint."""
        ctx = self.ctx
        ctx.version = await _start_version(ctx)
        sft = Path(run_dir) / "sft" / "hf"
        if sft.is_dir():
            await _load(ctx, str(sft))
            await ctx.push_weights(reference=True, rollout=False)
            ctx.reference.source = (str(sft), ctx.version)
        await _load(ctx, state["path"])
        await ctx.push_weights()
        ctx.sampler.cursor, ctx.start_step = state["cursor"], state["step"]
        ctx.control.knobs.update(state.get("knobs", {}))
        self.accuracy_before = state["accuracy_before"]
        ctx.log(f"resumed from checkpoint at step {state['step']}")


async def _prepare(ctx: FlowContext, ckpt: Checkpointer, run_dir: str, model_path: str) -> None:
    state = ckpt.latest()
    if state is not None:
        await ckpt.restore(state, run_dir)
        if ctx.reference.source is None:  # no warm start: the reference kept the job's initial model
            ctx.reference.source = (ctx.config.init or model_path, ctx.version)
        await ctx.reference.hold_back_strays()
        return
    await _load(ctx, ctx.config.init or model_path)  # every job starts from its initial model on every role
    if ctx.critic is not None:  # the critic restarts from the same backbone with a fresh head
        await ctx.critic.call("LoadCheckpoint", trainer_pb2.LoadCheckpointRequest(path=ctx.config.init or model_path))
    await ctx.push_weights(reference=True)
    ctx.reference.source = (ctx.config.init or model_path, ctx.version)
    if ctx.config.warm_start is not None:
        await _warm_start(ctx, run_dir)
    ckpt.accuracy_before = await ctx.evaluate()
    ctx.report_eval(0, {"accuracy": ckpt.accuracy_before})


async def run_job(manager: "JobManager", rec: "JobRecord", control: Control) -> None:
    cluster = manager.cluster
    cfg = parse_job_config(rec.config_yaml)
    flow_cls = resolve(cfg.algorithm, cluster.coordinator.flow_dirs, cluster.coordinator.flow_modules)
    params = from_dict(flow_cls.Params, cfg.params, "params")
    model_path = str(ensure_model(cluster))
    tokenizer = load_light_tokenizer(model_path)
    if cfg.prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"prompt_format: chat needs a tokenizer with a chat_template; {model_path} has none "
                          f"(use prompt_format: raw)")
    run = RunDir(rec.run_dir, on_tracker_error=lambda name, exc: manager.emit(
        rec.id, "log", {"stage": "main", "message": f"tracker {name} failed ({exc}); metrics.jsonl has every record"}))
    run.write_config(rec.config_yaml)
    started = time.time()
    job = {"id": rec.id, "name": rec.name, "config": cfg, "resolved": to_dict(cfg)}

    def emit(kind: str, payload: dict) -> None:
        manager.emit(rec.id, kind, payload)
        if kind in ("step", "eval"):
            run.append({"kind": kind, "stage": payload["stage"], "step": payload["step"],
                        "metrics": payload["metrics"], "time": time.time() - started})

    await manager.membership.refresh_dns()
    manager.membership.applied_by(rec.id, manager.membership.generation)
    rollout, reward, reference, trainer, critic = make_pools(manager.membership.pools_addresses(cluster.endpoints),
                                                             cluster.security,
                                                             cluster.coordinator.rpc_timeout_s,
                                                             int(tokenizer.pad_token_id),
                                                             authority=manager.membership.authority,
                                                             local_sockets=cluster.local_sockets)
    environment = (environment_pool(cluster.endpoints["environment"], cluster.security,
                                    cluster.coordinator.rpc_timeout_s, ledger=trainer.ledger)
                   if cluster.endpoints.get("environment") else None)
    sync = WeightSync(trainer, cluster.coordinator.store_host, cfg.sync.bucket_bytes, cfg.sync.timeout_s,
                      cfg.sync.backend, dtypes={"rollout": cluster.rollout.dtype, "reference": cluster.reference.dtype},
                      merged={"rollout"} if cluster.lora is not None and cluster.rollout.backend == "vllm" else set())
    data = load_splits(cfg)
    ctx = FlowContext(cfg, params, rollout, reward, reference, trainer, tokenizer, data,
                      PromptSampler(data.train, cfg.seed), sync, emit, control, critic=critic,
                      run_dir=rec.run_dir, membership=manager.membership, job_id=rec.id, environment=environment)
    if cluster.colocate:
        ctx.turns = Turns(cluster.colocate, {"trainer": trainer, "rollout": rollout, "reference": reference,
                                             "critic": critic}, cluster.coordinator.rpc_timeout_s)
        ctx.turns.phase, ctx.turns.note = ctx.phase, ctx.note
    ckpt = Checkpointer(ctx, rec.run_dir)
    every = cfg.checkpoint_every

    async def on_step_end(step: int) -> None:
        if every and step % every == 0 and step < cfg.steps:
            await ckpt.save(step)

    try:
        run.trackers = await asyncio.to_thread(open_trackers, cfg, Path(rec.run_dir), job, cluster.coordinator)
        if ctx.turns is not None:
            await ctx.turns.wake_all()
        await _prepare(ctx, ckpt, rec.run_dir, model_path)
        ctx.on_step_end = on_step_end
        await flow_cls().run(ctx)
        after = await ctx.evaluate()
        ctx.report_eval(cfg.steps, {"accuracy": after})
        summary = {"job_id": rec.id, "algorithm": cfg.algorithm, "accuracy_before": ckpt.accuracy_before,
                   "accuracy_after": after, "steps": cfg.steps, "wall_seconds": time.time() - started,
                   "run_dir": rec.run_dir}
        curve = run.plot()
        summary["curve_png"] = str(curve) if curve else ""
        path = run.write_summary(summary)
        emit("log", {"stage": "main", "message": f"summary: {path}"})
        await trainer.save_checkpoint(f"{rec.run_dir}/final", export_hf=True)
    except Cancelled:
        pass
    finally:
        if ctx.turns is not None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await ctx.turns.wake_all()
        manager.membership.detach(rec.id)
        run.close()
        for pool in (rollout, reward, reference, trainer, critic, environment):
            if pool is not None:
                await pool.close()
