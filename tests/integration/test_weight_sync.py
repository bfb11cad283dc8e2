"""The weight side channel against a real rollout service process, this test acting as trainer rank 0."""

from __future__ import annotations

import copy
import datetime as dt
import signal
import time

import grpc
import pytest
import torch
import torch.distributed as dist

from alignmesh.protos.common.v1 import weights_pb2
from alignmesh.protos.rollout.v1 import rollout_pb2_grpc
from alignmesh.services.models.loading import load_causal_lm, load_tokenizer
from alignmesh.services.sync import buckets as bk
from alignmesh.services.sync.convert import manifest_to_proto
from alignmesh.services.sync.group import GroupSpec, SyncError, SyncGroup
from alignmesh.services.sync.sender import named_weights, publish

from helpers import cluster_yaml, greedy_sequences, logprob_gap, serve

pytestmark = pytest.mark.integration
BUCKET = 256 * 1024  # several buckets for the 2.1 MB model


class Trainer:
    """Rank 0 of the sync group, in this process, with its own copy of the model."""

    def __init__(self, model_dir, address):
        self.model = load_causal_lm(model_dir)
        self.tok = load_tokenizer(model_dir)
        self.channel = grpc.insecure_channel(address)
        self.stub = rollout_pb2_grpc.RolloutServiceStub(self.channel)
        self.store = dist.TCPStore("127.0.0.1", 0, None, True, dt.timedelta(seconds=30), wait_for_workers=False)
        self.group = None

    def form(self, group_id: str, timeout_s: float) -> None:
        spec = GroupSpec(group_id, "127.0.0.1", self.store.port, 2, 0, "auto", timeout_s)
        req = weights_pb2.JoinSyncGroupRequest(group_id=group_id, store_host="127.0.0.1", store_port=self.store.port,
                                               world_size=2, rank=1, backend="auto", timeout_s=timeout_s)
        fut = self.stub.JoinSyncGroup.future(req, timeout=timeout_s + 10)
        self.group = SyncGroup(spec)
        assert fut.result().backend == "gloo"

    def prepare(self, group_id: str, version: int):
        manifest = manifest_to_proto(bk.specs_of(named_weights(self.model)), BUCKET)
        return self.stub.PrepareWeightUpdate.future(weights_pb2.PrepareWeightUpdateRequest(
            group_id=group_id, version=version, manifest=manifest), timeout=60)

    def version(self):
        return self.stub.GetWeightVersion(weights_pb2.GetWeightVersionRequest(), timeout=5)

    def sequences(self):
        """Greedy completions from the replica, with the replica's logprobs."""
        return greedy_sequences(self.stub, self.tok, ["12+34=", "7+8=", "99+99=", "0+5="], timeout_s=30)

    def max_logprob_gap(self) -> float:
        prompts, comp, n, logp, _ = self.sequences()
        return logprob_gap(self.model, prompts, comp, n, logp)


def _backends():
    import importlib.util

    vllm = pytest.mark.vllm if importlib.util.find_spec("vllm") else pytest.mark.skip(reason="no vllm installed")
    return [pytest.param(("hf", True), id="hf"), pytest.param(("vllm", True), marks=vllm, id="vllm"),
            pytest.param(("vllm", False), marks=vllm, id="vllm-untied")]


@pytest.fixture(scope="module", params=_backends())
def rollout(tiny_model_dir, tmp_path_factory, request):
    """A rollout replica on each backend. The default tiny model ties its embeddings (vLLM on CPU must repack
    them); the untied variant has its own output layer."""
    backend, tied = request.param
    tmp = tmp_path_factory.mktemp(f"sync-{backend}-{'tied' if tied else 'untied'}")
    model = tiny_model_dir
    if not tied:
        from alignmesh.services.models.tiny import create_model_dir

        model = create_model_dir(tmp / "untied", seed=0, tie=False)
    proc, address, _ = serve("rollout", cluster_yaml(tmp, model, rollout={"backend": backend}), tmp / "rollout.log")
    yield proc, address, model
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@pytest.fixture(scope="module")
def trainer(rollout):
    t = Trainer(rollout[2], rollout[1])
    with torch.no_grad():  # the trainer's weights differ from the replica's initial ones
        g = torch.Generator().manual_seed(1)
        for p in t.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    t.form("g1", timeout_s=20)
    return t


def test_after_sync_replica_logprobs_equal_trainer_logprobs(trainer):
    assert trainer.max_logprob_gap() > 1e-3  # before: different weights
    fut = trainer.prepare("g1", 1)
    stats = publish(trainer.group, named_weights(trainer.model), 1, BUCKET)
    staged = fut.result()
    size = sum(spec.nbytes for spec in bk.specs_of(named_weights(trainer.model)))
    assert size == (2_109_952 if trainer.model.config.tie_word_embeddings else 2_109_952 + 20 * 128 * 4)
    assert staged.version == 1 and staged.buckets == stats.buckets > 1 and staged.bytes == stats.bytes == size
    assert trainer.version().staged_version == 1 and trainer.version().version == 0
    trainer.stub.CommitWeightUpdate(weights_pb2.CommitWeightUpdateRequest(version=1), timeout=10)
    assert trainer.version().version == 1
    assert trainer.max_logprob_gap() <= 1e-5  # fp32, tied embeddings included
    assert trainer.sequences()[4] == 1  # samples carry the version that produced them


def test_corrupted_bucket_is_detected_and_old_weights_keep_serving(trainer):
    before = trainer.sequences()
    named = named_weights(trainer.model)
    tensors = dict(named)
    plan = bk.plan(bk.specs_of(named), BUCKET)
    flats = [bk.pack(b, {k: v + 0.01 for k, v in tensors.items()}) for b in plan]
    sums = [bk.checksum(f) for f in flats]
    fut = trainer.prepare("g1", 2)
    for i, flat in enumerate(flats):
        if i == 1:
            flat = flat.clone()
            flat.view(torch.int32)[10] ^= 1 << 3  # one flipped bit in transit
        trainer.group.broadcast(flat)
    trainer.group.broadcast(bk.header(2, plan, sums))
    with pytest.raises(grpc.RpcError) as err:
        fut.result()
    assert err.value.code() == grpc.StatusCode.ABORTED
    assert "bucket 1 of" in err.value.details() and "checksum" in err.value.details()
    assert trainer.version().version == 1 and trainer.version().staged_version == -1
    with pytest.raises(grpc.RpcError) as err:
        trainer.stub.CommitWeightUpdate(weights_pb2.CommitWeightUpdateRequest(version=2), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    after = trainer.sequences()
    assert torch.equal(after[1], before[1]) and torch.equal(after[3], before[3]) and after[4] == 1
    assert trainer.max_logprob_gap() <= 1e-5  # still serving version 1 = the trainer's unchanged weights


def test_nan_weights_are_withdrawn_and_never_served(trainer):
    """A NaN in the trainer's weights: every bucket still crosses (the replica expects them all), the trailer
    withdraws the version, the sender says which tensor, and the replica keeps serving its weights."""
    from alignmesh.services.common.errors import FailedPrecondition

    poisoned = copy.deepcopy(trainer.model)
    with torch.no_grad():
        poisoned.model.layers[1].mlp.up_proj.weight[3, 7] = float("nan")
    fut = trainer.prepare("g1", 2)
    with pytest.raises(FailedPrecondition, match=r"model.layers.1.mlp.up_proj.weight holds NaN or Inf; version 2 "
                                                  r"was withdrawn"):
        publish(trainer.group, named_weights(poisoned), 2, BUCKET)
    with pytest.raises(grpc.RpcError) as err:
        fut.result()
    assert err.value.code() == grpc.StatusCode.ABORTED and "withdrew version 2" in err.value.details()
    assert trainer.version().version == 1 and trainer.version().staged_version == -1
    assert trainer.max_logprob_gap() <= 1e-5  # still version 1; the next test syncs over the same group


def test_wrong_manifest_is_refused_before_any_transfer(trainer):
    specs = bk.specs_of(named_weights(trainer.model))
    specs[0] = bk.Spec(specs[0].name, specs[0].dtype, (specs[0].shape[0] + 1, specs[0].shape[1]))
    with pytest.raises(grpc.RpcError) as err:
        trainer.stub.PrepareWeightUpdate(weights_pb2.PrepareWeightUpdateRequest(
            group_id="g1", version=3, manifest=manifest_to_proto(specs, BUCKET)), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "model.embed_tokens.weight" in err.value.details()


def test_commit_is_atomic_for_requests_in_flight(trainer):
    """Generate calls racing a commit: each one is served wholly by one version, the one it reports (its logprobs
    match that version's weights), never by a mix."""
    import threading

    old = copy.deepcopy(trainer.model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        for p in trainer.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    fut = trainer.prepare("g1", 3)
    publish(trainer.group, named_weights(trainer.model), 3, BUCKET)
    assert fut.result().version == 3
    results, errors = {}, []

    def generate(k: int):
        try:
            results[k] = trainer.sequences()
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=generate, args=(k,)) for k in range(8)]
    for t in threads[:4]:
        t.start()
    trainer.stub.CommitWeightUpdate(weights_pb2.CommitWeightUpdateRequest(version=3), timeout=30)
    for t in threads[4:]:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 8
    assert all(results[k][4] == 3 for k in range(4, 8))  # started after the commit returned
    models = {1: old, 3: trainer.model}
    for prompts, comp, n, logp, version in results.values():
        assert version in models
        assert logprob_gap(models[version], prompts, comp, n, logp) <= 1e-5


def test_repeated_syncs_recycle_buffers_and_never_touch_the_served_weights(trainer):
    """Receivers refill the buffers of the version before the served one: four more versions, each staged while
    the previous one serves — which must stay intact until the commit — then served exactly."""
    g = torch.Generator().manual_seed(4)
    for version in (10, 11, 12, 13):
        served = copy.deepcopy(trainer.model)
        with torch.no_grad():
            for p in trainer.model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        fut = trainer.prepare("g1", version)
        publish(trainer.group, named_weights(trainer.model), version, BUCKET)
        assert fut.result().version == version
        prompts, comp, n, logp, current = trainer.sequences()
        assert current == version - (1 if version > 10 else 7)  # staged, not yet served
        assert logprob_gap(served, prompts, comp, n, logp) <= 1e-5
        trainer.stub.CommitWeightUpdate(weights_pb2.CommitWeightUpdateRequest(version=version), timeout=30)
        assert trainer.max_logprob_gap() <= 1e-5


def test_silent_peer_times_out_instead_of_hanging(trainer):
    trainer.form("g2", timeout_s=3)  # a fresh group with a short timeout; the replica never prepares
    start = time.monotonic()
    with pytest.raises(SyncError, match="failed or timed out"):
        publish(trainer.group, named_weights(trainer.model), 3, BUCKET)
    assert time.monotonic() - start < 3 + 5


def test_killed_peer_fails_the_sync_within_its_timeout(trainer, rollout):
    proc = rollout[0]
    trainer.form("g3", timeout_s=10)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    start = time.monotonic()
    with pytest.raises(SyncError):
        publish(trainer.group, named_weights(trainer.model), 5, BUCKET)
    assert time.monotonic() - start < 10 + 5
