"""Experiment trackers: every step and eval record of a job, as the run directory's ``metrics.jsonl`` has it, also
sent to TensorBoard, Weights & Biases or MLflow when the job selects them.

A metric is named ``<stage>/<kind>/<name>`` (``grpo/step/reward_mean``, ``grpo/eval/accuracy``) at the stage's own
step. A job resumed after a coordinator restart continues the same tracker run (W&B run id and MLflow run tagged
with the job id). A tracker that fails while logging is closed and reported once; ``metrics.jsonl`` stays the
record of the job.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from alignmesh.services.common.registry import Registry


class Tracker(Protocol):
    def log(self, record: dict) -> None: ...

    def summary(self, values: dict) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict) -> dict[str, float]:
    """The numeric metrics of one record, keyed ``<stage>/<kind>/<name>``."""
    prefix = f"{record['stage']}/{record['kind']}"
    return {f"{prefix}/{k}": float(v) for k, v in record["metrics"].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardTracker:
    def __init__(self, run_dir: Path, job: dict, settings) -> None:
        from torch.utils.tensorboard import SummaryWriter  # the tensorboard extra (checked at submit)

        self._writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, record: dict) -> None:
        for name, value in scalars(record).items():
            self._writer.add_scalar(name, value, record["step"])

    def summary(self, values: dict) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def wandb_run_id(job_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", job_id)[:64]


class WandbTracker:
    """One W&B run per job (id = the job id, resumed on restart); each stage's metrics plotted against its own
    ``<stage>/step`` (W&B's own steps must only grow, and a warm start's steps restart at 1 in the main stage)."""

    def __init__(self, run_dir: Path, job: dict, settings) -> None:
        import wandb

        opts = job["config"].wandb
        self._run = wandb.init(
            project=opts.project, entity=opts.entity or None, name=opts.name or job["name"] or job["id"],
            tags=opts.tags or None, mode=opts.mode, dir=str(run_dir), id=wandb_run_id(job["id"]), resume="allow",
            config=job["resolved"], settings=wandb.Settings(console="off", quiet=True, x_disable_stats=True))
        self._stages: set[str] = set()

    def log(self, record: dict) -> None:
        stage = record["stage"]
        if stage not in self._stages:
            self._run.define_metric(f"{stage}/step")
            self._run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
            self._stages.add(stage)
        self._run.log({f"{stage}/step": record["step"], **scalars(record)})

    def summary(self, values: dict) -> None:
        self._run.summary.update({k: v for k, v in values.items() if isinstance(v, (int, float, str))})

    def close(self) -> None:
        self._run.finish()


class MlflowTracker:
    """One MLflow run per job (tag ``alignmesh.job_id``, found again on restart) in the operator's tracking store or
    the run directory's SQLite file; the resolved config as params."""

    def __init__(self, run_dir: Path, job: dict, settings) -> None:
        from mlflow.tracking import MlflowClient

        uri = settings.mlflow_tracking_uri or mlflow_store(run_dir)
        self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        opts = job["config"].mlflow
        exp = self._client.get_experiment_by_name(opts.experiment)
        exp_id = exp.experiment_id if exp else self._client.create_experiment(opts.experiment)
        found = self._client.search_runs([exp_id], filter_string=f"tags.`alignmesh.job_id` = '{job['id']}'")
        if found:
            self._run_id = found[0].info.run_id
            return
        run = self._client.create_run(exp_id, run_name=opts.run_name or job["name"] or job["id"],
                                      tags={"alignmesh.job_id": job["id"]})
        self._run_id = run.info.run_id
        params = [(k, v) for k, v in flatten(job["resolved"]).items()]
        from mlflow.entities import Param

        for i in range(0, len(params), 100):  # MLflow's batch limit
            self._client.log_batch(self._run_id, params=[Param(k, str(v)[:6000]) for k, v in params[i:i + 100]])

    def log(self, record: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, record["step"]) for k, v in scalars(record).items()]
        if metrics:
            self._client.log_batch(self._run_id, metrics=metrics)

    def summary(self, values: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        numeric = [Metric(f"summary/{k}", float(v), now, 0) for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if numeric:
            self._client.log_batch(self._run_id, metrics=numeric)

    def close(self) -> None:
        self._client.set_terminated(self._run_id)


def mlflow_store(run_dir: Path) -> str:
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


TRACKERS: Registry[Callable[..., Tracker]] = Registry("tracker", "trackers")
TRACKERS.register("tensorboard", TensorBoardTracker)
TRACKERS.register("wandb", WandbTracker)
TRACKERS.register("mlflow", MlflowTracker)


def selected(cfg) -> list[str]:
    """The trackers a job config turns on, in a fixed order."""
    return [name for name in ("tensorboard", "wandb", "mlflow") if getattr(cfg, name)]


def open_trackers(cfg, run_dir: Path, job: dict, settings) -> dict[str, Tracker]:
    """The job's trackers, started (blocking: W&B starts its service process; call from a thread). ``job``: id,
    name, config (the JobConfig) and resolved (its plain-dict form)."""
    opened: dict[str, Tracker] = {}
    try:
        for name in selected(cfg):
            opened[name] = TRACKERS.get(name)(Path(run_dir), job, settings)
    except BaseException:
        for tracker in opened.values():
            tracker.close()
        raise
    return opened
