"""Run artifacts: the metrics JSONL and, when asked, TensorBoard event files that TensorBoard itself reads back."""

from __future__ import annotations

import json

import pytest

from alignmesh.coordinator.artifacts import RunDir


def test_metrics_go_to_jsonl_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunDir(tmp_path, tensorboard=True)
    for step in (1, 2, 3):
        run.append({"kind": "step", "stage": "main", "step": step, "metrics": {"reward_mean": step / 10, "note": "x"}})
    run.append({"kind": "eval", "stage": "main", "step": 3, "metrics": {"accuracy": 0.5}})
    run.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 3]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["main/eval/accuracy", "main/step/reward_mean"]
    reward = [(e.step, round(e.value, 6)) for e in events.Scalars("main/step/reward_mean")]
    assert reward == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert [(e.step, e.value) for e in events.Scalars("main/eval/accuracy")] == [(3, 0.5)]


def test_no_tensorboard_directory_unless_asked(tmp_path):
    run = RunDir(tmp_path)
    run.append({"kind": "step", "stage": "main", "step": 1, "metrics": {"reward_mean": 0.1}})
    run.close()
    assert not (tmp_path / "tensorboard").exists()
