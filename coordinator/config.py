"""Job configs: typed, validated at submit, dumped resolved into the run directory."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignmesh.services.common.config import from_dict, parse_yaml
from alignmesh.services.common.errors import ConfigError


def _check(cond: bool, key: str, why: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {why}")


@dataclass
class DatasetConfig:
    # "addition" (embedded), "calculator" (embedded: 2-digit products, for the calculator environment), "jsonl" / "parquet" (train/test files of prompt and answer columns) or "datasets"
    # (a save_to_disk directory).
    kind: str = "addition"
    train: str | None = None
    test: str | None = None
    path: str | None = None
    seed: int = 0
    test_size: int = 500
    dev_size: int = 200
    # Column names of the prompt and the reference answer (GSM8K: question, answer).
    prompt_key: str = "prompt"
    answer_key: str = "answer"
    # calculator: the share of warm-start examples shown as a tool-use trace (the rest answer directly).
    tool_traces: float = 0.25

    def validate(self, where: str) -> None:
        _check(self.kind in ("addition", "calculator", "jsonl", "parquet", "datasets"), f"{where}.kind",
               f"must be addition, calculator, jsonl, parquet or datasets, got {self.kind!r}")
        _check(0.0 <= self.tool_traces <= 1.0, f"{where}.tool_traces", f"must be in [0, 1], got {self.tool_traces}")
        if self.kind in ("jsonl", "parquet"):
            _check(bool(self.train), f"{where}.train", f"a {self.kind} file is required for kind {self.kind}")
        if self.kind == "datasets":
            _check(bool(self.path), f"{where}.path", "a datasets directory is required for kind datasets")

    def check_files(self, where: str) -> None:
        """The files it names exist (on the coordinator's machine: run there, not by a client)."""
        for key in ("train", "test") if self.kind in ("jsonl", "parquet") else ():
            value = getattr(self, key)
            if value:
                _check(Path(value).expanduser().is_file(), f"{where}.{key}", f"file {value} not found")
        if self.kind == "datasets":
            _check(Path(str(self.path)).expanduser().exists(), f"{where}.path", f"directory {self.path} not found")


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 4

    def validate(self, where: str) -> None:
        _check(self.temperature > 0, f"{where}.temperature", "must be > 0 for sampling")
        _check(0 < self.top_p <= 1, f"{where}.top_p", "must be in (0, 1]")
        _check(self.max_new_tokens >= 1, f"{where}.max_new_tokens", "must be >= 1")


@dataclass
class WarmStartConfig:
    """Supervised warm start on (prompt, answer) pairs before the main algorithm."""

    max_steps: int = 600
    batch_size: int = 64
    learning_rate: float = 1e-3
    target_dev_accuracy: float = 0.3
    eval_every: int = 10

    def validate(self, where: str) -> None:
        _check(self.max_steps >= 1, f"{where}.max_steps", "must be >= 1")
        _check(self.batch_size >= 1, f"{where}.batch_size", "must be >= 1")
        _check(self.learning_rate > 0, f"{where}.learning_rate", f"must be > 0, got {self.learning_rate}")
        _check(self.eval_every >= 1, f"{where}.eval_every", "must be >= 1")


@dataclass
class EnvironmentSpec:
    """Multi-turn episodes: the rollout generates a turn (ended by its end-of-turn token), the environment
    answers, the next turn continues from the exact token ids so far, until the environment says done or a
    budget runs out (then the episode ends with the rewards it has)."""

    name: str = ""  # a registered environment on the environment service; empty: its default
    max_turns: int = 4  # model turns per episode
    max_tokens: int = 48  # tokens after the prompt: model turns and observations together

    def validate(self, where: str) -> None:
        _check(1 <= self.max_turns <= 64, f"{where}.max_turns", f"must be in [1, 64], got {self.max_turns}")
        _check(1 <= self.max_tokens <= 65536, f"{where}.max_tokens", f"must be in [1, 65536], got {self.max_tokens}")
        if self.name:
            _label(self.name, f"{where}.name")


@dataclass
class EvalConfig:
    every: int = 25
    size: int = 500

    def validate(self, where: str) -> None:
        _check(self.every >= 1, f"{where}.every", "must be >= 1")
        _check(self.size >= 1, f"{where}.size", "must be >= 1")


@dataclass
class SyncConfig:
    bucket_mb: float = 64.0
    timeout_s: float = 60.0
    backend: str = "auto"

    def validate(self, where: str) -> None:
        _check(self.bucket_mb > 0, f"{where}.bucket_mb", "must be > 0")
        _check(self.timeout_s > 0, f"{where}.timeout_s", "must be > 0")
        _check(self.backend in ("auto", "gloo", "nccl"), f"{where}.backend", "must be auto, gloo or nccl")

    @property
    def bucket_bytes(self) -> int:
        return int(self.bucket_mb * 1024 * 1024)


_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/ ]{0,127}")


def _label(value: str, key: str) -> None:
    _check(bool(_LABEL.fullmatch(value)), key, f"must be 1-128 letters, digits, spaces or _.-/ starting with a "
                                                f"letter or digit, got {value!r}")


@dataclass
class WandbConfig:
    """Log to Weights & Biases: offline by default (files under runs/<job>/wandb, upload later with `wandb sync`);
    online only where the operator allows it (``coordinator.trackers_online``, WANDB_API_KEY on the coordinator)."""
    project: str = "alignmesh"
    mode: str = "offline"
    entity: str = ""
    name: str = ""  # default: the job's name, else its id
    tags: list[str] = field(default_factory=list)

    def validate(self, where: str) -> None:
        _check(self.mode in ("offline", "online"), f"{where}.mode", f"must be offline or online, got {self.mode!r}")
        for key in ("project", "entity", "name"):
            if getattr(self, key):
                _label(getattr(self, key), f"{where}.{key}")
        for i, tag in enumerate(self.tags):
            _label(tag, f"{where}.tags[{i}]")


@dataclass
class MlflowConfig:
    """Log to MLflow: the operator's tracking server (``coordinator.mlflow_tracking_uri``) or, by default, a SQLite
    store in the run directory (runs/<job>/mlflow.db: ``mlflow ui --backend-store-uri sqlite:///…``)."""
    experiment: str = "alignmesh"
    run_name: str = ""  # default: the job's name, else its id

    def validate(self, where: str) -> None:
        _label(self.experiment, f"{where}.experiment")
        if self.run_name:
            _label(self.run_name, f"{where}.run_name")


MAX_STALENESS = 16


@dataclass
class JobConfig:
    # A registered flow name ("grpo", "sft") or "package.module:Flow" / "path/to/file.py:Flow".
    algorithm: str = "grpo"
    seed: int = 0
    steps: int = 100
    # Algorithm-specific knobs, validated by the flow's own config class.
    params: dict[str, Any] = field(default_factory=dict)
    warm_start: WarmStartConfig | None = None
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    reward_fn: str = ""
    # Initial model of every role for this job (a local HF directory); empty = the cluster's model.
    init: str = ""
    # Save a resumable checkpoint (trainer state + data cursor) every N steps of the main stage, so that a restarted
    # coordinator or trainer resumes there (the last 2 are kept); 0 = only the final model at the end.
    checkpoint_every: int = 50
    # Also write the metrics as TensorBoard event files under runs/<job>/tensorboard (the tensorboard extra).
    tensorboard: bool = False
    # Experiment trackers besides the run directory's metrics.jsonl (each an optional extra on the coordinator).
    wandb: WandbConfig | None = None
    mlflow: MlflowConfig | None = None
    # How prompts reach the model: "raw" (the text as it is) or "chat" (a user message through the tokenizer's chat
    # template, with the assistant's turn opened).
    prompt_format: str = "raw"
    # Asynchronous training: collect experience for up to this many steps ahead of the step being trained, so no
    # sample is trained on more than this many weight versions after the one that generated it. 0: in turn.
    max_staleness: int = 0
    # With max_staleness > 0: train this many first steps of the main stage in turn before running ahead (the policy
    # moves fastest right after the warm start, where a lagging sample costs the most learning).
    staleness_warmup: int = 0
    # With max_staleness > 1: divide a step's learning rate by its samples' mean version lag where that exceeds 1
    # (staleness-aware SGD: samples two versions old take half a step).
    staleness_lr: bool = True
    # Episodes in an environment instead of single completions (needs the cluster's environment role).
    environment: EnvironmentSpec | None = None

    def validate(self, where: str) -> None:
        """The schema: types (by ``from_dict``) and values. The same on a client (``alignmesh validate``, before a
        submit) and on the coordinator; what the coordinator's machine must have is ``check_environment``."""
        _check(self.steps >= 0, "steps", f"must be >= 0, got {self.steps}")
        _check(self.checkpoint_every >= 0, "checkpoint_every", f"must be >= 0, got {self.checkpoint_every}")
        _check(self.prompt_format in ("raw", "chat"), "prompt_format",
               f"must be raw or chat, got {self.prompt_format!r}")
        _check(0 <= self.max_staleness <= MAX_STALENESS, "max_staleness",
               f"must be in [0, {MAX_STALENESS}] (0: synchronous), got {self.max_staleness}")
        _check(self.staleness_warmup >= 0, "staleness_warmup",
               f"must be >= 0 (steps trained in turn before running ahead), got {self.staleness_warmup}")

    def check_environment(self) -> None:
        """What the coordinator's machine must provide: the files the job names, the packages it asks for."""
        self.dataset.check_files("dataset")
        for key, package, extra in (("tensorboard", "tensorboard", "tensorboard"), ("wandb", "wandb", "wandb"),
                                    ("mlflow", "mlflow", "mlflow")):
            if getattr(self, key):
                _check(importlib.util.find_spec(package) is not None, key,
                       f"needs the {package} package on the coordinator: pip install 'alignmesh[{extra}]'")
        if self.init:
            _check((Path(self.init).expanduser() / "config.json").is_file(), "init",
                   f"{self.init} is not a model directory (no config.json)")


def parse_job_config(text: str, source: str = "job config") -> JobConfig:
    """Parse and check the schema; errors name ``source`` (with line and column for YAML syntax) or the field."""
    return from_dict(JobConfig, parse_yaml(text, source), "")
