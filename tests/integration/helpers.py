"""Helpers for integration tests: real services on loopback ports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import yaml

from alignmesh.deploy.local import free_port, health_ok


def cluster_yaml(tmp: Path, model_dir: Path | str, **extra) -> Path:
    cfg = {"model": str(model_dir), "state_dir": str(tmp / "state"), "cache_dir": str(tmp / "cache"),
           "coordinator": {"runs_dir": str(tmp / "runs")}}
    cfg.update(extra)
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def serve(role: str, config: Path, log: Path) -> tuple[subprocess.Popen, str, int]:
    """Start ``alignmesh serve <role>`` and wait until it reports SERVING."""
    port, mport = free_port(), free_port()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "alignmesh.deploy.cli", "serve", role, "--config",
                                 str(config), "--port", str(port), "--metrics-port", str(mport)],
                                stdout=fh, stderr=subprocess.STDOUT, env=env)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while not health_ok(address):
        if proc.poll() is not None:
            raise RuntimeError(f"{role} exited: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"{role} not healthy: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc, address, mport


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def metric_value(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address)


def greedy_sequences(stub, tok, texts: list[str], timeout_s: float = 60):
    """Greedy 4-token completions of ``texts`` from a rollout replica: (prompt ids, completions [B, T],
    lengths [B], the replica's logprobs [B, T], the weight version that produced them)."""
    import torch

    from alignmesh.protos.rollout.v1 import rollout_pb2
    from alignmesh.services.common.convert import decode, encode

    prompts = [tok(t)["input_ids"] for t in texts]
    ids = torch.zeros(len(prompts), max(map(len, prompts)), dtype=torch.int64)
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = torch.tensor(p)
    resp = stub.Generate(rollout_pb2.GenerateRequest(
        prompt_ids=encode(ids), prompt_lengths=encode(torch.tensor([len(p) for p in prompts])),
        sampling=rollout_pb2.SamplingParams(max_new_tokens=4, greedy=True)), timeout=timeout_s)
    comp, n, logp = decode(resp.completion_ids, "c"), decode(resp.completion_lengths, "n"), decode(resp.logprobs, "l")
    return prompts, comp, n, logp, resp.weight_version


def logprob_gap(model, prompts, comp, n, logp) -> float:
    """Largest |logprob the replica reported - logprob under ``model``| over the completions."""
    import torch

    from alignmesh.services.models.logprobs import token_logprobs

    gap = 0.0
    with torch.no_grad():
        for i, p in enumerate(prompts):
            seq = torch.tensor([p + comp[i, :n[i]].tolist()])
            mine = token_logprobs(model, seq, torch.ones_like(seq))[0, len(p):]
            gap = max(gap, float((mine - logp[i, :n[i]]).abs().max()))
    return gap


def wandb_offline_history(run_dir: Path) -> list[dict]:
    """The history rows of the W&B offline run(s) under ``run_dir``, read from the ``run-*.wandb`` file itself: a
    7-byte header (``:W&B``, magic, version), then LevelDB-log records (crc32c, length, type) in 32 KiB blocks, each
    a serialized ``wandb.proto.wandb_internal_pb2.Record``."""
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    rows = []
    for path in sorted(Path(run_dir).glob("wandb/*run-*/run-*.wandb")):
        data, pos, pending = path.read_bytes(), 7, b""
        assert data[:4] == b":W&B", path
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
                pos += 32768 - pos % 32768
                continue
            length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
            chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            if kind == 0 and length == 0:
                continue
            pending = chunk if kind in (1, 2) else pending + chunk
            if kind in (1, 4):  # FULL or LAST
                rec = wandb_internal_pb2.Record()
                rec.ParseFromString(pending)
                if rec.WhichOneof("record_type") == "history":
                    rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                 for item in rec.history.item})
    return rows


def mlflow_history(run_dir: Path, experiment: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric of the job's MLflow run in the run directory's SQLite store."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
