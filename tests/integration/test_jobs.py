"""The job API against a real coordinator and real role services: watch, pause/resume, live knobs, cancel,
coordinator SIGKILL + restart with exact resume, and a rollout replica lost mid-job."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import load_file

from alignmesh.clients.client import Client
from alignmesh.deploy.local import LocalCluster
from alignmesh.protos.common.v1 import weights_pb2
from alignmesh.protos.rollout.v1 import rollout_pb2_grpc
from alignmesh.services.common.settings import load_cluster_config

from helpers import cluster_yaml, mlflow_history, wandb_offline_history

pytestmark = pytest.mark.integration


def job(steps: int, **extra) -> str:
    lines = [f"steps: {steps}", "seed: 3", "params: {prompts_per_step: 8, group_size: 4, learning_rate: 1.0e-4}",
             "eval: {every: 100000, size: 50}", "sync: {bucket_mb: 1, timeout_s: 10}", "reward_fn: digits"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


DIGITS_RULE = """
def digits(prompt, completion, metadata):
    # A dense reward for an untrained model: the share of digit characters in the completion.
    return sum(c.isdigit() for c in completion) / max(1, len(completion))
"""


def start_cluster(tmp, model_dir, **roles) -> LocalCluster:
    """A local cluster whose reward service knows the ``digits`` rule."""
    (tmp / "rules.py").write_text(DIGITS_RULE)
    reward = {**roles.pop("reward", {}), "functions": {"digits": f"{tmp / 'rules.py'}:digits"}}
    coordinator = {"runs_dir": str(tmp / "runs"), **roles.pop("coordinator", {})}
    cfg = load_cluster_config(cluster_yaml(tmp, model_dir, reward=reward, coordinator=coordinator, **roles))
    c = LocalCluster(cfg)
    c.start(timeout_s=150)
    return c


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    c = start_cluster(tmp_path_factory.mktemp("jobs"), tiny_model_dir, rollout={"replicas": 2})
    yield c
    c.stop()


def wait_for_step(client: Client, job_id: str, step: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get(job_id).step < step:
        assert time.monotonic() < deadline, f"job {job_id} did not reach step {step}"
        time.sleep(0.05)


def wait_until_held(client: Client, job_id: str, count: int = 1, timeout_s: float = 60) -> int:
    """Wait for the job's ``count``-th pause to take hold (the step in flight has finished); the last step."""
    deadline = time.monotonic() + timeout_s
    while True:
        holds = [e.message for e in client.events(job_id) if e.kind == "log" and e.message.startswith("paused after")]
        if len(holds) >= count:
            return int(holds[count - 1].rsplit(" ", 1)[1])
        assert time.monotonic() < deadline, f"job {job_id} did not hold after pause {count}"
        time.sleep(0.05)


def main_steps(client: Client, job_id: str) -> dict[int, dict]:
    """Last reported metrics per main-stage step (a resumed job reports the steps after its checkpoint again)."""
    return {e.step: e.metrics for e in client.events(job_id) if e.kind == "step" and e.stage == "main"}


def test_watch_pause_update_resume_cancel(cluster):
    with Client(cluster.coordinator_address()) as client:
        short = client.submit(job(3, tensorboard="true", wandb="{project: am-test, tags: [ci]}",
                                  mlflow="{experiment: am-exp}"), name="short")
        done = client.wait(short.id)
        assert done.state == "succeeded" and done.step == 3 and "reward_mean" in done.metrics
        kinds = [e.kind for e in client.watch(short.id)]
        assert kinds[0] == "state" and kinds.count("step") == 3 and kinds[-1] == "state"
        run = Path(done.run_dir)
        assert (run / "metrics.jsonl").is_file() and (run / "curve.png").is_file()
        assert any((run / "tensorboard").glob("events.out.tfevents.*"))  # read back in tests/unit
        steps = [e for e in client.events(short.id) if e.kind == "step"]
        rewards = [(e.step, pytest.approx(e.metrics["reward_mean"])) for e in steps]
        rows = [r for r in wandb_offline_history(run) if "main/step/reward_mean" in r]
        assert [(r["main/step"], r["main/step/reward_mean"]) for r in rows] == rewards
        assert mlflow_history(run, "am-exp", "main/step/reward_mean") == rewards
        after = json.loads((run / "summary.json").read_text())["accuracy_after"]
        assert mlflow_history(run, "am-exp", "summary/accuracy_after") == [(0, pytest.approx(after))]

        j = client.submit(job(100000), name="long")
        wait_for_step(client, j.id, 3)
        assert client.pause(j.id).state == "paused"
        held = wait_until_held(client, j.id)
        assert client.get(j.id).step == held
        with pytest.raises(grpc.RpcError) as err:
            client.update(j.id, learning_rate=-1.0)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "knobs.learning_rate" in err.value.details()
        for bad in (float("nan"), float("inf")):  # NaN compares false with every bound: checked on its own
            with pytest.raises(grpc.RpcError) as err:
                client.update(j.id, temperature=bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "finite" in err.value.details()
        client.update(j.id, learning_rate=5e-5, temperature=0.9)
        assert client.resume(j.id).state == "running"
        wait_for_step(client, j.id, held + 2)
        events = client.events(j.id)  # no step ran between the pause taking hold and the resume (no sleep needed)
        hold_at = next(i for i, e in enumerate(events) if e.kind == "log" and e.message.startswith("paused after"))
        resume_at = next(i for i, e in enumerate(events) if i > hold_at and e.kind == "state" and e.state == "running")
        assert not [e for e in events[hold_at:resume_at] if e.kind == "step"]
        assert [e.step for e in events[resume_at:] if e.kind == "step"][0] == held + 1
        steps = main_steps(client, j.id)
        assert steps[held]["lr"] == pytest.approx(1e-4) and steps[held + 2]["lr"] == pytest.approx(5e-5)
        assert any(e.kind == "update" and e.metrics["learning_rate"] == 5e-5 for e in client.events(j.id))
        start = time.monotonic()
        client.cancel(j.id)
        final = client.wait(j.id, timeout_s=30)
        assert final.state == "cancelled" and time.monotonic() - start < 10 and final.finished_at > 0
        with pytest.raises(grpc.RpcError) as err:
            client.cancel(j.id)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_invalid_job_config_writes_nothing(cluster):
    with Client(cluster.coordinator_address()) as client:
        before = len(client.list())
        missing = Path(cluster.cfg.coordinator.runs_dir).expanduser().resolve() / "missing.jsonl"  # an allowed place
        for bad, field in (("algorithm: sarsa\n", "algorithm"), ("params: {learning_rate: -1}\n", "params"),
                           ("params: {prompts_per_step: 3, group_size: 1}\n", "group_size"),
                           (f"dataset: {{kind: jsonl, train: {missing}}}\n", "dataset.train")):
            with pytest.raises(grpc.RpcError) as err:
                client.submit(bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()
        assert len(client.list()) == before


def test_job_paths_and_code_outside_the_allowed_places_are_refused(cluster, tiny_model_dir, tmp_path):
    """PERMISSION_DENIED naming the setting, nothing written, nothing imported; the trainer refuses a checkpoint
    path outside its roots the same way."""
    import shutil

    from alignmesh.protos.trainer.v1 import trainer_pb2, trainer_pb2_grpc

    outside = tmp_path / "outside-model"
    shutil.copytree(tiny_model_dir, outside)
    (tmp_path / "flow.py").write_text("from pathlib import Path\nPath(__file__).with_name('ran').touch()\n")
    with Client(cluster.coordinator_address()) as client:
        before = len(client.list())
        for bad, setting in ((f"init: {outside}\n", "security.path_roots"),
                             (f"algorithm: {tmp_path / 'flow.py'}:Flow\n", "coordinator.flow_dirs")):
            with pytest.raises(grpc.RpcError) as err:
                client.submit(bad)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and setting in err.value.details()
        assert len(client.list()) == before and not (tmp_path / "ran").exists()
    trainer = next(m for m in cluster.members if m.role == "trainer")
    with grpc.insecure_channel(cluster.address(trainer)) as ch:
        with pytest.raises(grpc.RpcError) as err:
            trainer_pb2_grpc.TrainerServiceStub(ch).SaveCheckpoint(
                trainer_pb2.SaveCheckpointRequest(path=str(tmp_path / "ckpt")), timeout=30)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and not (tmp_path / "ckpt").exists()


def test_coordinator_sigkill_resumes_exactly(cluster):
    spec = job(16, checkpoint_every=4)
    with Client(cluster.coordinator_address()) as client:
        reference = client.wait(client.submit(spec, name="uninterrupted").id)
        interrupted = client.submit(spec, name="interrupted")
        wait_for_step(client, interrupted.id, 10)
    coordinator = cluster.process("coordinator")
    coordinator.send_signal(signal.SIGKILL)
    coordinator.wait(10)
    cluster.restart("coordinator")
    with Client(cluster.coordinator_address()) as client:
        resumed = client.wait(interrupted.id, timeout_s=120)
        assert resumed.state == "succeeded"
        assert any("resumed from checkpoint at step 8" in e.message for e in client.events(interrupted.id))
        a, b = main_steps(client, reference.id), main_steps(client, interrupted.id)
    assert sorted(a) == sorted(b) == list(range(1, 17))
    assert [a[s]["prompt_crc"] for s in a] == [b[s]["prompt_crc"] for s in a]
    wa = load_file(str(Path(reference.run_dir) / "final" / "hf" / "model.safetensors"))
    wb = load_file(str(Path(interrupted.run_dir) / "final" / "hf" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_lost_rollout_replica_is_survived_and_readmitted(cluster):
    with Client(cluster.coordinator_address()) as client:
        j = client.submit(job(100000), name="lossy")
        wait_for_step(client, j.id, 3)
        victim = cluster.process("rollout", 1)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        at_kill = client.get(j.id).step
        wait_for_step(client, j.id, at_kill + 5)  # keeps training on the remaining replica
        client.pause(j.id)
        cluster.restart("rollout", 1)
        client.resume(j.id)
        deadline = time.monotonic() + 30
        while version(cluster, 1) == 0:  # re-admitted at a push once its health check passes
            assert time.monotonic() < deadline, "the restarted replica was not re-admitted"
            time.sleep(0.1)
        client.pause(j.id)
        wait_until_held(client, j.id, count=2)
        versions = [version(cluster, 0), version(cluster, 1)]
        client.cancel(j.id)
        client.wait(j.id, timeout_s=30)
        steps = main_steps(client, j.id)
    assert all(m["samples"] == 32 for m in steps.values())  # 8 prompts x 4 samples, none lost or doubled
    assert versions[0] == versions[1] > 0  # the restarted replica serves the current weights


def version(cluster, replica: int) -> int:
    address = next(cluster.address(m) for m in cluster.members if m.role == "rollout" and m.replica == replica)
    with grpc.insecure_channel(address) as ch:
        return rollout_pb2_grpc.RolloutServiceStub(ch).GetWeightVersion(weights_pb2.GetWeightVersionRequest(),
                                                                        timeout=5).version


@pytest.fixture(scope="module")
def two_references(tiny_model_dir, tmp_path_factory):
    c = start_cluster(tmp_path_factory.mktemp("refs"), tiny_model_dir, reference={"replicas": 2})
    yield c
    c.stop()


def test_lost_reference_replica_comes_back_with_the_reference_weights(two_references, tiny_model_dir):
    """The reference is the job's initial model, not the trainer's current weights: a reference replica that
    is killed and restarted mid-job is re-admitted only after loading that model, so both replicas give the
    same logprobs — the initial model's — while the policy has moved away from it."""
    from alignmesh.protos.reference.v1 import reference_pb2, reference_pb2_grpc
    from alignmesh.services.common.convert import decode, encode
    from alignmesh.services.models.loading import load_causal_lm
    from alignmesh.services.models.logprobs import token_logprobs

    cluster = two_references

    def reference(replica: int, method: str, request):
        address = next(cluster.address(m) for m in cluster.members if m.role == "reference" and m.replica == replica)
        with grpc.insecure_channel(address) as ch:
            return getattr(reference_pb2_grpc.ReferenceServiceStub(ch), method)(request, timeout=10)

    with Client(cluster.coordinator_address()) as client:
        text = job(100000).replace("learning_rate: 1.0e-4}", "learning_rate: 1.0e-3, kl_coef: 0.05}")
        j = client.submit(text, name="lossy-reference")
        wait_for_step(client, j.id, 3)
        victim = cluster.process("reference", 1)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        wait_for_step(client, j.id, client.get(j.id).step + 5)  # keeps going on the other reference replica
        client.pause(j.id)
        cluster.restart("reference", 1)
        client.resume(j.id)
        want = reference(0, "GetWeightVersion", weights_pb2.GetWeightVersionRequest()).version
        deadline = time.monotonic() + 30
        while reference(1, "GetWeightVersion", weights_pb2.GetWeightVersionRequest()).version != want:
            assert time.monotonic() < deadline, "the restarted reference replica was not re-admitted"
            time.sleep(0.1)
        client.cancel(j.id)
        client.wait(j.id, timeout_s=30)
        steps = main_steps(client, j.id)
    assert all(m["samples"] == 32 for m in steps.values())
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11]])
    req = reference_pb2.LogProbsRequest(input_ids=encode(ids), attention_mask=encode(torch.ones_like(ids)))
    got = [decode(reference(r, "ComputeLogProbs", req).logprobs, "l") for r in (0, 1)]
    initial = token_logprobs(load_causal_lm(tiny_model_dir), ids, torch.ones_like(ids))
    assert float((got[1] - got[0]).abs().max()) <= 1e-6
    assert float((got[1] - initial).abs().max()) <= 1e-5


def test_client_errors_are_typed_by_what_the_caller_must_do(cluster):
    import alignmesh

    with Client(cluster.coordinator_address()) as client:
        with pytest.raises(alignmesh.errors.InvalidConfig) as err:
            client.submit("steps: -3\n")
        assert err.value.status == grpc.StatusCode.INVALID_ARGUMENT and "steps" in err.value.details()
        with pytest.raises(alignmesh.errors.NotFound):
            client.get("no-such-job")
        done = client.wait(client.submit(job(1), name="typed").id)
        with pytest.raises(alignmesh.errors.Conflict):
            client.cancel(done.id)
        with pytest.raises(alignmesh.errors.Refused):  # a path outside the allowed places
            client.submit(job(1, init="/etc"))


def test_read_verbs_speak_json_for_scripts(cluster, tmp_path):
    import json
    import subprocess
    import sys

    import yaml

    def alignmesh(*args):
        return subprocess.run([sys.executable, "-m", "alignmesh.deploy.cli", *args], capture_output=True, text=True,
                              timeout=120)

    with Client(cluster.coordinator_address()) as client:
        done = client.wait(client.submit(job(2), name="json").id)
    out = alignmesh("watch", done.id, "-o", "json", "--coordinator", cluster.coordinator_address())
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode == 0 and [e["step"] for e in events if e["kind"] == "step"] == [1, 2]
    assert events[-1]["kind"] == "state" and events[-1]["state"] == "succeeded"
    out = alignmesh("jobs", "-o", "json", "--coordinator", cluster.coordinator_address())
    assert out.returncode == 0 and done.id in {j["id"] for j in json.loads(out.stdout)}
    assert out.stderr.strip() == f"coordinator {cluster.coordinator_address()} (from --coordinator); no token"
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump({"state_dir": str(cluster.cfg.state_dir)}))
    out = alignmesh("status", str(tmp_path / "cluster.yaml"), "-o", "json")
    status = json.loads(out.stdout)
    assert out.returncode == 0 and all(m["serving"] for m in status["members"])
    assert {m["role"] for m in status["members"]} >= {"trainer", "rollout", "reward", "reference", "coordinator"}
