"""The service spine end to end: the launcher starts every role as its own process; each answers its main RPC,
rejects bad input with INVALID_ARGUMENT and keeps serving, exports metrics, and stops on SIGTERM."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from alignmesh.deploy.local import LocalCluster
from alignmesh.protos.common.v1 import weights_pb2
from alignmesh.protos.coordinator.v1 import coordinator_pb2, coordinator_pb2_grpc
from alignmesh.protos.reference.v1 import reference_pb2, reference_pb2_grpc
from alignmesh.protos.reward.v1 import reward_pb2, reward_pb2_grpc
from alignmesh.protos.rollout.v1 import rollout_pb2, rollout_pb2_grpc
from alignmesh.protos.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from alignmesh.services.common.convert import decode, encode
from alignmesh.services.common.settings import load_cluster_config
from alignmesh.services.models.loading import load_tokenizer

from helpers import cluster_yaml, metric_value, scrape

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spine")
    cfg = load_cluster_config(cluster_yaml(tmp, tiny_model_dir, rollout={"replicas": 2}))
    c = LocalCluster(cfg)
    c.start(timeout_s=150)
    yield c
    c.stop()


def addr(cluster, role, replica=0):
    return next(cluster.address(m) for m in cluster.members if m.role == role and m.replica == replica)


def mport(cluster, role, replica=0):
    return next(m.metrics_port for m in cluster.members if m.role == role and m.replica == replica)


def test_every_role_is_healthy_and_reflects_its_service(cluster):
    names = {"rollout": "alignmesh.rollout.v1.RolloutService", "reward": "alignmesh.reward.v1.RewardService",
             "reference": "alignmesh.reference.v1.ReferenceService",
             "trainer": "alignmesh.trainer.v1.TrainerService",
             "coordinator": "alignmesh.coordinator.v1.CoordinatorService"}
    assert sorted({m.role for m in cluster.members}) == sorted(names)
    assert len([m for m in cluster.members if m.role == "rollout"]) == 2
    for m in cluster.members:
        with grpc.insecure_channel(cluster.address(m)) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for service in ("", names[m.role]):
                resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert resp.status == health_pb2.HealthCheckResponse.SERVING
            assert names[m.role] in ProtoReflectionDescriptorDatabase(ch).get_services()


def test_rollout_generates(cluster, tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    prompts = [tok("12+34=")["input_ids"], tok("5+6=")["input_ids"]]
    ids = torch.zeros(2, 7, dtype=torch.int64)
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = torch.tensor(p)
    req = rollout_pb2.GenerateRequest(prompt_ids=encode(ids), prompt_lengths=encode(torch.tensor([7, 5])),
                                      sampling=rollout_pb2.SamplingParams(max_new_tokens=4, n=3, seed=1))
    with grpc.insecure_channel(addr(cluster, "rollout", 1)) as ch:
        resp = rollout_pb2_grpc.RolloutServiceStub(ch).Generate(req, timeout=30)
    comp, lengths, logp = decode(resp.completion_ids, "c"), decode(resp.completion_lengths, "l"), \
        decode(resp.logprobs, "p")
    assert comp.dtype == torch.int64 and logp.dtype == torch.float32 and comp.shape[0] == 6 and comp.shape[1] <= 4
    assert logp.shape == comp.shape and len(resp.finish_reasons) == 6 and resp.weight_version == 0
    assert torch.isfinite(logp).all() and (logp <= 0).all()
    assert ((lengths >= 1) & (lengths <= 4)).all()
    for i, n in enumerate(lengths.tolist()):
        assert (logp[i, :n] < 0).all() and (logp[i, n:] == 0).all()


def test_reference_reward_trainer_and_coordinator_answer(cluster):
    ids = torch.tensor([[1, 4, 5, 13, 6, 14, 8, 2], [1, 4, 13, 5, 14, 6, 2, 0]])
    mask = (ids != 0).long()
    mask[0, 0] = 1
    with grpc.insecure_channel(addr(cluster, "reference")) as ch:
        resp = reference_pb2_grpc.ReferenceServiceStub(ch).ComputeLogProbs(
            reference_pb2.LogProbsRequest(input_ids=encode(ids), attention_mask=encode(mask)), timeout=30)
    lp = decode(resp.logprobs, "lp")
    assert lp.shape == (2, 8) and (lp[:, 0] == 0).all() and (lp[:, 1:7] < 0).all() and lp[1, 7] == 0
    with grpc.insecure_channel(addr(cluster, "reward")) as ch:
        items = [reward_pb2.ScoreItem(prompt="12+30=", completion="42"),
                 reward_pb2.ScoreItem(prompt="1+1=", completion="3", metadata={"answer": "2"})]
        resp = reward_pb2_grpc.RewardServiceStub(ch).Score(reward_pb2.ScoreRequest(items=items), timeout=10)
    assert decode(resp.scores, "s").tolist() == [1.0, 0.0] and resp.reward_fn == "addition_exact"
    loss_mask = torch.zeros(2, 8)
    loss_mask[:, 5:] = 1.0
    with grpc.insecure_channel(addr(cluster, "trainer")) as ch:
        stub = trainer_pb2_grpc.TrainerServiceStub(ch)
        resp = stub.TrainStep(trainer_pb2.TrainStepRequest(
            input_ids=encode(ids), attention_mask=encode(mask), loss_mask=encode(loss_mask),
            loss=trainer_pb2.LossSpec(name="sft")), timeout=30)
        assert resp.step == 1 and 0 < resp.metrics["nll"] < 10 and resp.metrics["tokens"] == 6
        state = stub.GetState(trainer_pb2.GetStateRequest(), timeout=5)
        assert state.step == 1 and state.num_parameters == 527_488
    with grpc.insecure_channel(cluster.coordinator_address()) as ch:
        jobs = coordinator_pb2_grpc.CoordinatorServiceStub(ch).ListJobs(coordinator_pb2.ListJobsRequest(), timeout=5)
    assert list(jobs.jobs) == []


def test_bad_input_is_invalid_argument_naming_the_field_and_service_keeps_serving(cluster, tiny_model_dir,
                                                                                     tmp_path):
    from alignmesh.services.models.tiny import create_model_dir

    runs = Path(cluster.cfg.coordinator.runs_dir)  # inside the directories the services may read
    other_model = create_model_dir(runs / "wider", seed=0, hidden=64)  # another architecture
    ids = torch.tensor([[1, 4, 13]])
    bad = rollout_pb2.GenerateRequest(prompt_ids=encode(ids), prompt_lengths=encode(torch.tensor([3, 3])),
                                      sampling=rollout_pb2.SamplingParams(max_new_tokens=2))
    good = rollout_pb2.GenerateRequest(prompt_ids=encode(ids), prompt_lengths=encode(torch.tensor([3])),
                                       sampling=rollout_pb2.SamplingParams(max_new_tokens=2))
    with grpc.insecure_channel(addr(cluster, "rollout")) as ch:
        stub = rollout_pb2_grpc.RolloutServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(bad, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "prompt_lengths: has 2 entries for 1 prompts" in err.value.details()
        assert stub.Generate(good, timeout=10).weight_version == 0
    with grpc.insecure_channel(addr(cluster, "trainer")) as ch:
        stub = trainer_pb2_grpc.TrainerServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.TrainStep(trainer_pb2.TrainStepRequest(input_ids=encode(ids), attention_mask=encode(ids),
                                                        loss_mask=encode(torch.ones(1, 5))), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "loss_mask: shape [1, 5]" in err.value.details()
    with grpc.insecure_channel(addr(cluster, "reference")) as ch:
        stub = reference_pb2_grpc.ReferenceServiceStub(ch)
        for request, code, text in (
                (reference_pb2.LoadWeightsRequest(path="/nowhere", version=1), "PERMISSION_DENIED",
                 "path: /nowhere is outside the directories"),
                (reference_pb2.LoadWeightsRequest(path=str(runs / "nowhere"), version=1), "NOT_FOUND",
                 "nowhere is not a model directory"),
                (reference_pb2.LoadWeightsRequest(path=str(tiny_model_dir), version=0), "INVALID_ARGUMENT",
                 "version: must be > 0"),
                (reference_pb2.LoadWeightsRequest(path=str(other_model), version=1), "FAILED_PRECONDITION",
                 "manifest:")):
            with pytest.raises(grpc.RpcError) as err:
                stub.LoadWeights(request, timeout=30)
            assert err.value.code() == getattr(grpc.StatusCode, code) and text in err.value.details()
        assert stub.GetWeightVersion(weights_pb2.GetWeightVersionRequest(), timeout=5).version == 0
    with grpc.insecure_channel(cluster.coordinator_address()) as ch:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.SubmitJob(coordinator_pb2.SubmitJobRequest(config_yaml="params:\n  group_size: 1\n"), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "group_size" in err.value.details()
        assert list(stub.ListJobs(coordinator_pb2.ListJobsRequest(), timeout=5).jobs) == []
        with pytest.raises(grpc.RpcError) as err:
            stub.GetJob(coordinator_pb2.GetJobRequest(job_id="nope"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_prompts_past_the_context_and_oversized_requests_are_refused_by_name(cluster):
    """The embedded model has 64 positions: a 60-token prompt plus 8 new tokens would run past them (the HF
    backend used to carry on silently); n and the request's size are capped."""
    long = torch.full((1, 60), 5, dtype=torch.int64)
    cases = ((long, 8, 1, "prompt_ids[0]: 60 prompt tokens + sampling.max_new_tokens 8 exceed the model's context "
                          "of 64 tokens"),
             (long[:, :4], 64, 1, "sampling.max_new_tokens: 64 leaves no room"),
             (long[:, :4], 2, 5000, "sampling.n: must be in [1, 1024]"))
    with grpc.insecure_channel(addr(cluster, "rollout")) as ch:
        stub = rollout_pb2_grpc.RolloutServiceStub(ch)
        for ids, new, n, text in cases:
            req = rollout_pb2.GenerateRequest(prompt_ids=encode(ids),
                                              prompt_lengths=encode(torch.tensor([ids.shape[1]])),
                                              sampling=rollout_pb2.SamplingParams(max_new_tokens=new, n=n))
            with pytest.raises(grpc.RpcError) as err:
                stub.Generate(req, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and text in err.value.details()
        fits = rollout_pb2.GenerateRequest(prompt_ids=encode(long), prompt_lengths=encode(torch.tensor([60])),
                                           sampling=rollout_pb2.SamplingParams(max_new_tokens=4))
        assert stub.Generate(fits, timeout=30).completion_ids.shape[0] == 1
    with grpc.insecure_channel(addr(cluster, "reference")) as ch:
        wide = torch.full((1, 65), 5, dtype=torch.int64)
        with pytest.raises(grpc.RpcError) as err:
            reference_pb2_grpc.ReferenceServiceStub(ch).ComputeLogProbs(
                reference_pb2.LogProbsRequest(input_ids=encode(wide), attention_mask=encode(torch.ones_like(wide))),
                timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "context of 64" in err.value.details()


def test_metrics_count_rpcs_and_errors(cluster):
    """Counters move by exactly the calls this test makes (whatever ran before it)."""
    ids = torch.tensor([[1, 4, 13]])
    good = rollout_pb2.GenerateRequest(prompt_ids=encode(ids), prompt_lengths=encode(torch.tensor([3])),
                                       sampling=rollout_pb2.SamplingParams(max_new_tokens=2))
    bad = rollout_pb2.GenerateRequest(prompt_ids=encode(ids), prompt_lengths=encode(torch.tensor([9])),
                                      sampling=rollout_pb2.SamplingParams(max_new_tokens=2))
    counts = [("alignmesh_rpc_total", dict(code="OK")), ("alignmesh_rpc_errors_total", dict(code="INVALID_ARGUMENT")),
              ("alignmesh_rpc_latency_seconds_count", {})]

    def rollout_counts():
        text = scrape(mport(cluster, "rollout"))
        return [metric_value(text, name, role="rollout", method="Generate", **labels) for name, labels in counts]

    def trainer_state_ok():
        return metric_value(scrape(mport(cluster, "trainer")), "alignmesh_rpc_total", role="trainer",
                            method="GetState", code="OK")

    before, state_before = rollout_counts(), trainer_state_ok()
    with grpc.insecure_channel(addr(cluster, "rollout")) as ch:
        stub = rollout_pb2_grpc.RolloutServiceStub(ch)
        stub.Generate(good, timeout=30)
        with pytest.raises(grpc.RpcError):
            stub.Generate(bad, timeout=10)
    with grpc.insecure_channel(addr(cluster, "trainer")) as ch:
        trainer_pb2_grpc.TrainerServiceStub(ch).GetState(trainer_pb2.GetStateRequest(), timeout=10)
    after = rollout_counts()
    assert [a - b for a, b in zip(after, before)] == [1, 1, 2]
    assert trainer_state_ok() - state_before == 1
    assert metric_value(scrape(mport(cluster, "rollout")), "alignmesh_serving", role="rollout") == 1


def test_the_coordinator_generates_over_the_replicas_local_socket_with_the_same_samples_checks_and_metrics(
        cluster, tiny_model_dir):
    """A rollout replica offers its same-host socket in a trailer; the coordinator's pool takes it after the first
    call, gets the very samples gRPC gives for the same seed, and bad input still comes back INVALID_ARGUMENT
    naming the field. The replica counts those calls as it counts gRPC ones."""
    import asyncio

    from alignmesh.coordinator.handles import RolloutPool, endpoints
    from alignmesh.services.common.local_socket import TRAILER
    from alignmesh.services.common.settings import SecurityConfig

    tok = load_tokenizer(tiny_model_dir)
    prompts = [tok(f"{i}+{2 * i}=")["input_ids"] for i in range(6)]
    address = addr(cluster, "rollout", 1)
    text = scrape(mport(cluster, "rollout", 1))
    ok_before = metric_value(text, "alignmesh_rpc_total", role="rollout", method="Generate", code="OK")
    bad_before = metric_value(text, "alignmesh_rpc_errors_total", role="rollout", method="Generate",
                              code="INVALID_ARGUMENT")

    async def generate(local: bool):
        pool = RolloutPool(endpoints("rollout", [address], SecurityConfig(), rollout_pb2_grpc.RolloutServiceStub),
                           30, 0, local_sockets=local)
        try:
            outs = [await pool.generate(prompts, 2, seed, max_new_tokens=4) for seed in (5, 6, 7)]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pool.call("Generate", convert_request([[1, 4, 99]]))  # 99: outside the vocabulary
            return outs, pool.eps[0].local, err.value
        finally:
            await pool.close()

    grpc_outs, no_socket, _ = asyncio.run(generate(False))
    local_outs, socket_client, err = asyncio.run(generate(True))
    assert no_socket is None and socket_client is not None  # took the offer after its first call
    for a, b in zip(grpc_outs, local_outs):
        assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.lengths, b.lengths)
        assert torch.equal(a.logprobs, b.logprobs)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "prompt_ids" in err.details()
    with grpc.insecure_channel(address) as ch:
        _, call = rollout_pb2_grpc.RolloutServiceStub(ch).Generate.with_call(
            convert_request(prompts), timeout=30)
    assert dict(call.trailing_metadata())[TRAILER] == f"{socket_client.name}|{socket_client.instance}"
    text = scrape(mport(cluster, "rollout", 1))
    # 3 + 3 generates and the trailer check; the bad call once on each road
    assert metric_value(text, "alignmesh_rpc_total", role="rollout", method="Generate", code="OK") - ok_before == 7
    assert metric_value(text, "alignmesh_rpc_errors_total", role="rollout", method="Generate",
                        code="INVALID_ARGUMENT") - bad_before == 2


def test_the_reference_answers_over_its_local_socket_with_the_same_logprobs(cluster):
    import asyncio

    from alignmesh.coordinator.handles import ReferencePool, endpoints
    from alignmesh.services.common.settings import SecurityConfig

    ids = torch.tensor([[1, 4, 5, 13, 6, 14, 8, 2], [1, 4, 13, 5, 14, 6, 2, 0]])
    mask = (ids != 0).long()

    async def logprobs():
        pool = ReferencePool(endpoints("reference", [addr(cluster, "reference")], SecurityConfig(),
                                       reference_pb2_grpc.ReferenceServiceStub), 30)
        try:
            first = await pool.logprobs(ids, mask)  # over gRPC: the reply offers the socket
            taken = pool.eps[0].local
            second = await pool.logprobs(ids, mask)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pool.call("ComputeLogProbs", reference_pb2.LogProbsRequest(
                    input_ids=encode(ids), attention_mask=encode(mask[:1])))
            return first, second, taken, err.value
        finally:
            await pool.close()

    first, second, taken, err = asyncio.run(logprobs())
    assert taken is not None and torch.equal(first, second)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "attention_mask" in err.details()


def test_the_reward_scores_over_its_local_socket_with_the_same_scores_and_errors(cluster):
    import asyncio

    from alignmesh.coordinator.convert import score_request
    from alignmesh.coordinator.handles import RewardPool, endpoints
    from alignmesh.services.common.settings import SecurityConfig

    items = [("12+30=", "42", {}), ("1+1=", "3", {"answer": "2"}), ("5+5=", "10", {})]

    async def score():
        pool = RewardPool(endpoints("reward", [addr(cluster, "reward")], SecurityConfig(),
                                    reward_pb2_grpc.RewardServiceStub), 30)
        try:
            first = await pool.score(items)  # over gRPC: the reply offers the socket
            taken = pool.eps[0].local
            second = await pool.score(items)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pool.call("Score", score_request(items, "no_such_rule"))
            return first, second, taken, err.value
        finally:
            await pool.close()

    first, second, taken, err = asyncio.run(score())
    assert taken is not None and first.tolist() == second.tolist() == [1.0, 0.0, 1.0]
    with grpc.insecure_channel(addr(cluster, "reward")) as ch:
        with pytest.raises(grpc.RpcError) as by_grpc:
            reward_pb2_grpc.RewardServiceStub(ch).Score(score_request(items, "no_such_rule"), timeout=10)
    assert err.code() == by_grpc.value.code() and err.details() == by_grpc.value.details()
    assert "no_such_rule" in err.details()


def convert_request(prompts):
    from alignmesh.coordinator.convert import generate_request

    return generate_request(prompts, 0, 1, 1, 1.0, 1.0, 2, False)


def test_sigterm_stops_every_process_gracefully(cluster):
    procs = list(cluster._procs)
    cluster.stop()
    assert all(p.poll() is not None for p in procs)
    assert [p.returncode for p in procs] == [0] * len(procs)

