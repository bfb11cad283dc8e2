"""Run artifacts and experiment trackers: the metrics JSONL, and TensorBoard / MLflow files read back with the
tools' own readers (W&B's offline files are read back from a real job in tests/integration/test_jobs.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from alignmesh.coordinator.artifacts import RunDir
from alignmesh.coordinator.config import parse_job_config
from alignmesh.coordinator.trackers import open_trackers, wandb_run_id
from alignmesh.services.common.config import to_dict
from alignmesh.services.common.errors import ConfigError

RECORDS = [{"kind": "step", "stage": "main", "step": s, "metrics": {"reward_mean": s / 10, "note": "x"}}
           for s in (1, 2, 3)] + [{"kind": "eval", "stage": "main", "step": 3, "metrics": {"accuracy": 0.5}}]


@dataclass
class Settings:
    mlflow_tracking_uri: str = ""


def start(tmp_path, yaml_text: str, job_id: str = "job-1") -> RunDir:
    cfg = parse_job_config(yaml_text)
    run = RunDir(tmp_path)
    job = {"id": job_id, "name": "", "config": cfg, "resolved": to_dict(cfg)}
    run.trackers = open_trackers(cfg, tmp_path, job, Settings())
    return run


def test_metrics_go_to_jsonl_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = start(tmp_path, "tensorboard: true\n")
    for record in RECORDS:
        run.append(record)
    run.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 3]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["main/eval/accuracy", "main/step/reward_mean"]
    reward = [(e.step, round(e.value, 6)) for e in events.Scalars("main/step/reward_mean")]
    assert reward == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert [(e.step, e.value) for e in events.Scalars("main/eval/accuracy")] == [(3, 0.5)]


def test_no_tracker_files_unless_asked(tmp_path):
    run = start(tmp_path, "steps: 1\n")
    run.append(RECORDS[0])
    run.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_mlflow_run_with_params_metrics_summary_and_resumed_by_job_id(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run = start(tmp_path, "mlflow: {experiment: exp-a}\nseed: 7\n")
    for record in RECORDS[:2]:
        run.append(record)
    run.close()
    run = start(tmp_path, "mlflow: {experiment: exp-a}\nseed: 7\n")  # the coordinator restarted: same run
    for record in RECORDS[2:]:
        run.append(record)
    run.write_summary({"accuracy_after": 0.75, "run_dir": "x"})
    run.close()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    (found,) = client.search_runs([client.get_experiment_by_name("exp-a").experiment_id])
    assert found.data.tags["alignmesh.job_id"] == "job-1" and found.info.run_name == "job-1"
    assert found.data.params["seed"] == "7" and found.data.params["sampling.max_new_tokens"] == "4"
    history = sorted((m.step, m.value) for m in client.get_metric_history(found.info.run_id, "main/step/reward_mean"))
    assert history == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert found.data.metrics["main/eval/accuracy"] == 0.5 and found.data.metrics["summary/accuracy_after"] == 0.75


class Broken:
    def log(self, record):
        raise OSError("disk full")

    def summary(self, values):
        raise AssertionError("a dropped tracker is not called again")

    def close(self):
        raise AssertionError("a dropped tracker is not called again")


def test_a_failing_tracker_is_dropped_once_and_the_jsonl_keeps_every_record(tmp_path):
    failures = []
    run = RunDir(tmp_path, on_tracker_error=lambda name, exc: failures.append((name, str(exc))))
    run.trackers = {"broken": Broken()}
    for record in RECORDS:
        run.append(record)
    run.write_summary({"accuracy_after": 1.0})
    run.close()
    assert failures == [("broken", "disk full")]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == len(RECORDS)


@pytest.mark.parametrize("text, message", [
    ("wandb: {mode: cloud}\n", "wandb.mode: must be offline or online"),
    ("wandb: {project: '../x'}\n", "wandb.project: must be 1-128 letters"),
    ("wandb: {tags: [ok, 'a;b']}\n", r"wandb.tags\[1\]: must be"),
    ("mlflow: {experiment: ''}\n", "mlflow.experiment: must be"),
    ("mlflow: {tracking_uri: 'sqlite:////etc/x.db'}\n", "unknown key 'mlflow.tracking_uri'"),
])
def test_tracker_options_are_checked_by_name(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_job_config(text)


def test_wandb_run_ids_are_w_and_b_safe():
    assert wandb_run_id("j-20261202/abc:1") == "j-20261202-abc-1"


def test_wandb_online_only_where_the_operator_allows_it():
    pytest.importorskip("wandb")
    from alignmesh.coordinator.jobs import validate
    from alignmesh.services.common.settings import ClusterConfig

    cluster = ClusterConfig()
    with pytest.raises(ConfigError, match=r"wandb.mode: online .* \(coordinator.trackers_online\)"):
        validate("wandb: {mode: online}\n", cluster)
    assert validate("wandb: {}\n", cluster).wandb.mode == "offline"
    cluster.coordinator.trackers_online = True
    assert validate("wandb: {mode: online}\n", cluster).wandb.mode == "online"
