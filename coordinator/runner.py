"""Runs one job: reset every role to the initial weights, optional warm start, the flow, the artifacts."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from alignmesh.coordinator.config import JobConfig, parse_job_config
from alignmesh.coordinator.data import PromptSampler, Splits, addition_splits, load_hf_disk, load_jsonl
from alignmesh.coordinator.artifacts import RunDir
from alignmesh.coordinator.flows.base import Cancelled, FlowContext
from alignmesh.coordinator.flows.registry import resolve
from alignmesh.coordinator.flows.sft import SFT, SFTParams
from alignmesh.coordinator.handles import make_pools
from alignmesh.coordinator.weights import WeightSync
from alignmesh.protos.common.v1 import weights_pb2
from alignmesh.protos.trainer.v1 import trainer_pb2
from alignmesh.services.common.config import from_dict
from alignmesh.services.models.light_tokenizer import load_light_tokenizer

if TYPE_CHECKING:
    from alignmesh.coordinator.jobs import JobManager
    from alignmesh.coordinator.store import JobRecord


def load_splits(cfg: JobConfig) -> Splits:
    d = cfg.dataset
    if d.kind == "addition":
        return addition_splits(d.seed, test_size=d.test_size, dev_size=d.dev_size)
    if d.kind == "jsonl":
        train = load_jsonl(d.train, "dataset.train")
        test = load_jsonl(d.test, "dataset.test") if d.test else train[: d.test_size]
        return Splits(train=train, test=test, dev=test[: d.dev_size])
    train = load_hf_disk(d.path, "train")
    test = load_hf_disk(d.path, "test")
    return Splits(train=train, test=test, dev=test[: d.dev_size])


async def _start_version(ctx: FlowContext) -> int:
    versions = [(await ctx.trainer.state()).weight_version]
    for pool in (ctx.rollout, ctx.reference):
        for ep in pool.eps:
            v = await ep.stub.GetWeightVersion(weights_pb2.GetWeightVersionRequest(), timeout=30,
                                               metadata=ep.metadata)
            versions.append(v.version)
    return max(versions)


async def _reset(ctx: FlowContext, model_path: str) -> None:
    """Every job starts from the initial model: trainer loads it, rollout and reference receive it."""
    await ctx.trainer.call("LoadCheckpoint", trainer_pb2.LoadCheckpointRequest(path=model_path))
    ctx.version = await _start_version(ctx)
    await ctx.push_weights(reference=True)


async def _warm_start(ctx: FlowContext, rec: "JobRecord") -> None:
    ws = ctx.config.warm_start
    params = SFTParams(ws.batch_size, ws.learning_rate, ws.target_dev_accuracy, ws.eval_every)
    main_params, main_sampler = ctx.params, ctx.sampler
    ctx.stage, ctx.params = "sft", params
    ctx.sampler = PromptSampler(ctx.data.train, seed=ctx.config.seed + 1)
    await SFT(max_steps=ws.max_steps).run(ctx)
    # The warmed-up model becomes the reference and the new start; the main stage gets a fresh optimizer.
    sft_dir = f"{rec.run_dir}/sft"
    await ctx.trainer.save_checkpoint(sft_dir, export_hf=True)
    await ctx.trainer.call("LoadCheckpoint", trainer_pb2.LoadCheckpointRequest(path=f"{sft_dir}/hf"))
    await ctx.push_weights(reference=True)
    ctx.stage, ctx.params, ctx.sampler = "main", main_params, main_sampler


async def run_job(manager: "JobManager", rec: "JobRecord", cancel: asyncio.Event) -> None:
    cluster = manager.cluster
    cfg = parse_job_config(rec.config_yaml)
    flow_cls = resolve(cfg.algorithm)
    params = from_dict(flow_cls.Params, cfg.params, "params")
    model_path = str(cluster.model_path())
    tokenizer = load_light_tokenizer(model_path)
    run = RunDir(rec.run_dir)
    run.write_config(rec.config_yaml)
    started = time.time()

    def emit(kind: str, payload: dict) -> None:
        manager.emit(rec.id, kind, payload)
        if kind in ("step", "eval"):
            run.append({"kind": kind, "stage": payload["stage"], "step": payload["step"],
                        "metrics": payload["metrics"], "time": time.time() - started})

    rollout, reward, reference, trainer = make_pools(cluster.endpoints, cluster.security,
                                                     cluster.coordinator.rpc_timeout_s, int(tokenizer.pad_token_id))
    sync = WeightSync(trainer, cluster.coordinator.store_host, cfg.sync.bucket_bytes, cfg.sync.timeout_s,
                      cfg.sync.backend)
    data = load_splits(cfg)
    ctx = FlowContext(cfg, params, rollout, reward, reference, trainer, tokenizer, data,
                      PromptSampler(data.train, cfg.seed), sync, emit, cancel)
    try:
        await _reset(ctx, model_path)
        if cfg.warm_start is not None:
            await _warm_start(ctx, rec)
        before = await ctx.evaluate()
        ctx.report_eval(0, {"accuracy": before})
        await flow_cls().run(ctx)
        after = await ctx.evaluate()
        ctx.report_eval(cfg.steps, {"accuracy": after})
        summary = {"job_id": rec.id, "algorithm": cfg.algorithm, "accuracy_before": before, "accuracy_after": after,
                   "steps": cfg.steps, "wall_seconds": time.time() - started, "run_dir": rec.run_dir}
        curve = run.plot()
        summary["curve_png"] = str(curve) if curve else ""
        path = run.write_summary(summary)
        emit("log", {"stage": "main", "message": f"summary: {path}"})
        await trainer.save_checkpoint(f"{rec.run_dir}/final", export_hf=True)
    except Cancelled:
        pass
    finally:
        run.close()
        for pool in (rollout, reward, reference, trainer):
            await pool.close()
