"""Coordinator metrics: step phases, learning signals, weight-sync cost and sample staleness."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PHASE_SECONDS = Histogram("alignmesh_step_phase_seconds", "Time per training-step phase", ["phase"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
STEPS = Counter("alignmesh_steps_total", "Training steps completed", ["stage"])
REWARD_MEAN = Gauge("alignmesh_reward_mean", "Mean reward of the last step's samples")
ACCURACY = Gauge("alignmesh_accuracy", "Last held-out greedy accuracy")
KL = Gauge("alignmesh_kl", "Last step's mean KL to the reference (k3)")
SYNC_BYTES = Counter("alignmesh_weight_sync_bytes_total", "Bytes of weights pushed over the side channel")
SYNC_SECONDS = Histogram("alignmesh_weight_sync_seconds", "Wall time of one weight push to all receivers",
                         buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30))
VERSION_LAG = Gauge("alignmesh_sample_version_lag", "Mean weight-version lag of the last step's samples")
VERSION_LAG_MAX = Gauge("alignmesh_sample_version_lag_max", "Largest weight-version lag of the last step's samples")
IS_RATIO = Gauge("alignmesh_importance_ratio", "Off-policy importance ratio of the last step's tokens", ["stat"])
RPC_BYTES = Counter("alignmesh_experience_rpc_bytes_total", "Payload bytes of the coordinator's RPCs (both ways)",
                    ["role"])
RPC_TRANSFER = Counter("alignmesh_experience_rpc_transfer_seconds_total",
                       "RPC wall time minus server handler time, summed over the coordinator's calls", ["role"])
ROLLOUT_SHARE = Gauge("alignmesh_rollout_time_share",
                      "Share of the last step's time the trainer waited for experience (generation, scoring): "
                      "near 1, more rollout replicas would speed the job up; the rollout autoscaling signal")
ROLLOUT_REPLICAS = Gauge("alignmesh_rollout_replicas", "Rollout replicas serving the running job")
JOBS = Gauge("alignmesh_jobs", "Jobs by state", ["state"])


def observe_step(stage: str, metrics: dict[str, float]) -> None:
    STEPS.labels(stage).inc()
    for key, value in metrics.items():
        if key.startswith("time_"):
            PHASE_SECONDS.labels(key[5:]).observe(value)
    if metrics.get("time_step"):
        waited = metrics.get("time_wait", metrics.get("time_generate", 0.0) + metrics.get("time_reward", 0.0))
        ROLLOUT_SHARE.set(min(1.0, waited / metrics["time_step"]))
    if "rollout_replicas" in metrics:
        ROLLOUT_REPLICAS.set(metrics["rollout_replicas"])
    if "reward_mean" in metrics:
        REWARD_MEAN.set(metrics["reward_mean"])
    if "kl" in metrics:
        KL.set(metrics["kl"])
    if "version_lag" in metrics:
        VERSION_LAG.set(metrics["version_lag"])
        VERSION_LAG_MAX.set(metrics.get("version_lag_max", metrics["version_lag"]))
    for stat in ("mean", "max"):
        if f"is_ratio_{stat}" in metrics:
            IS_RATIO.labels(stat).set(metrics[f"is_ratio_{stat}"])
    if "is_truncated" in metrics:
        IS_RATIO.labels("truncated_share").set(metrics["is_truncated"])
    for key, value in metrics.items():
        if key.startswith("rpc_bytes_"):
            RPC_BYTES.labels(key[10:]).inc(value)
        elif key.startswith("rpc_ms_"):
            RPC_TRANSFER.labels(key[7:]).inc(value / 1000)
    if "sync_bytes" in metrics:
        SYNC_BYTES.inc(metrics["sync_bytes"])
        SYNC_SECONDS.observe(metrics.get("sync_ms", 0.0) / 1000)
