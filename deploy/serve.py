"""``alignmesh serve <role>``: build one role's backend and serve it (the launcher: the one place that knows
every role, so that roles never import one another)."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Sequence

from alignmesh.services.common import threads
from alignmesh.services.common.paths import path_policy
from alignmesh.services.common.registry import load_plugins
from alignmesh.services.common.server import ServeSpec, check_exposure, serve
from alignmesh.services.common.errors import ConfigError
from alignmesh.services.common.settings import ROLES, ClusterConfig

COMPUTE_ROLES = ("trainer", "critic", "rollout", "reference")


def default_threads(cfg: ClusterConfig, role: str) -> int:
    """Each process's share of the cores, by which processes compute at the same time (``cfg.cpu_plan``).

    "phased": a synchronous step runs its phases one after another (generate, reward, reference, train, sync), so
    the trainer computes alone and may use every core; the replicas of one role compute together and split them.
    "overlapped": while the trainer trains, the rollout replicas and the reference collect the next steps; the
    trainer gets half of the cores, the collecting processes split the other half. Light roles (reward rules,
    coordinator) get one thread. ``threads_per_process`` overrides all of this.
    """
    if cfg.threads_per_process:
        return cfg.threads_per_process
    if role not in COMPUTE_ROLES:
        return 1
    if cfg.cpu_plan == "overlapped":
        train_cores = max(1, threads.cpu_count() // 2)
        if role in ("trainer", "critic"):
            return max(1, train_cores // (cfg.replicas("trainer") + cfg.replicas("critic")))
        collecting = cfg.replicas("rollout") + cfg.replicas("reference")
        return max(1, (threads.cpu_count() - train_cores) // collecting)
    return threads.share(cfg.replicas(role))


def torch_trainer_options(cfg: ClusterConfig) -> dict:
    """The torch trainer's options from the config. Shared prefixes reuse a KV cache, which layers under gradient
    checkpointing do not keep, so checkpointing turns them off."""
    t = cfg.trainer
    return dict(dtype=t.dtype, gradient_checkpointing=t.gradient_checkpointing, lora=cfg.lora,
                shared_prefix=t.shared_prefix and not t.gradient_checkpointing)


def _limits(path) -> tuple[int, int]:
    """(vocab size, positions) from the model's config, read once: token ids and sequence lengths in requests are
    checked against them (positions 0 when the config does not say)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(path))
    keys = ("max_position_embeddings", "n_positions", "max_sequence_length")
    return int(cfg.vocab_size), next((int(getattr(cfg, k)) for k in keys if getattr(cfg, k, None)), 0)


def build(role: str, cfg: ClusterConfig) -> Callable[[object], Sequence[str]]:
    """Load the backend (slow part) and return a function that registers its servicer on a server."""
    if role == "coordinator":
        from alignmesh.coordinator.servicer import build_coordinator

        return build_coordinator(cfg)
    if role == "environment":
        from alignmesh.services.environment import servicer
        from alignmesh.services.environment.table import Environments, EpisodeTable

        e = cfg.environment
        table = EpisodeTable(Environments(e.default, e.environments), e.max_episodes, e.episode_idle_s)
        svc = servicer.EnvironmentServicer(table)
        return lambda server: servicer.add_to_server(svc, server)
    from alignmesh.services.models.tiny import ensure_model

    path = str(ensure_model(cfg))
    vocab, context = _limits(path)
    be = None
    if role == "rollout":
        from alignmesh.services.rollout import backend, servicer

        r = cfg.rollout
        colocated = any("rollout" in g for g in cfg.colocate)
        extra = dict(kv_cache_gb=r.kv_cache_gb, sleep_mode=colocated) if r.backend == "vllm" else {}
        if cfg.lora is not None and r.backend == "hf":  # vLLM serves the plain model: pushes arrive merged
            extra["lora"] = cfg.lora
        be = backend.create(r.backend, model_path=path, max_batch_size=r.max_batch_size, device=r.device,
                            dtype=r.dtype, **extra)
        svc = servicer.RolloutServicer(be, vocab, context)
    elif role == "reference":
        from alignmesh.services.reference import backend, servicer

        be = backend.TorchReferenceBackend(path, device=cfg.reference.device,
                                           micro_batch_size=cfg.reference.micro_batch_size,
                                           dtype=cfg.reference.dtype, lora=cfg.lora,
                                           shared_prefix=cfg.reference.shared_prefix)
        svc = servicer.ReferenceServicer(be, vocab, path_policy(cfg), context)
    elif role == "reward":
        from alignmesh.services.reward import servicer
        from alignmesh.services.reward.registry import Registry

        registry = Registry(cfg.reward.default)
        for name, ref in cfg.reward.functions.items():
            registry.add_rule(name, ref)
        if cfg.reward.model:
            from alignmesh.services.reward.model_scorer import SequenceClassifierScorer

            registry.add("model", SequenceClassifierScorer(cfg.reward.model))
        registry.check()
        svc = servicer.RewardServicer(registry)
    elif role == "trainer":
        from alignmesh.services.trainer import backend, servicer

        t = cfg.trainer
        load_plugins(t.plugins, "trainer.plugins")  # user losses (multi-process trainers load them in every rank)
        extra = torch_trainer_options(cfg) if t.backend == "torch" else {}
        if t.backend in ("deepspeed", "megatron"):  # each rank gets its share of the trainer's cores
            extra = dict(plugins=t.plugins, processes=t.processes, zero_stage=t.zero_stage, tensor_parallel=t.tensor_parallel,
                         dist_timeout_s=t.dist_timeout_s, dtype=t.dtype,
                         threads=max(1, default_threads(cfg, "trainer") // t.processes))
        be = backend.create(t.backend, model_path=path, learning_rate=t.learning_rate, betas=t.betas,
                            weight_decay=t.weight_decay, grad_clip=t.grad_clip, seed=t.seed, device=t.device,
                            **extra)
        svc = servicer.TrainerServicer(be, vocab, path_policy(cfg), context)
    elif role == "critic":
        from alignmesh.services.trainer import backend, servicer

        c = cfg.critic
        load_plugins(cfg.trainer.plugins, "trainer.plugins")
        be = backend.create("critic", model_path=path, learning_rate=c.learning_rate, betas=c.betas,
                            grad_clip=c.grad_clip, seed=c.seed, device=c.device)
        svc = servicer.TrainerServicer(be, vocab, path_policy(cfg), context)
    else:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    register = (lambda server: servicer.add_to_server(svc, server))
    register.close = getattr(be, "close", None)  # backends with processes of their own stop them
    register.local_methods = svc.local_methods() if hasattr(svc, "local_methods") else None
    return register


def run(role: str, cfg: ClusterConfig, port: int, metrics_port: int, host: str | None = None,
        insecure: bool = False, register_with: str | None = None, advertise: str | None = None,
        port_file: str | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s")
    spec = ServeSpec(role=role, host=host or cfg.host, port=port, metrics_port=metrics_port,
                     security=cfg.security, insecure=insecure, port_file=port_file, local_socket=cfg.local_sockets)
    check_exposure(spec)  # before the slow part
    threads.apply(default_threads(cfg, role))
    announcer = None
    if register_with:
        from alignmesh.deploy.announce import Announcer, advertise_host

        if role not in ("rollout", "reward", "reference"):
            raise ConfigError(f"--register-with: only rollout, reward and reference replicas register; the {role} "
                              f"is listed in endpoints.{role}")
        announcer = Announcer(role, register_with, advertise_host(spec.host, advertise), cfg.security)
    register = build(role, cfg)
    asyncio.run(serve(spec, register, on_stop=getattr(register, "close", None), lifecycle=announcer))
