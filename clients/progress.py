"""Terminal rendering of job events."""

from __future__ import annotations

from typing import Iterable

from alignmesh.clients.client import Event

PHASES = ("generate", "reward", "reference", "train", "sync")


def total_steps(config_yaml: str) -> int:
    """The ``steps`` of a job config (for the progress bar); 0 when it cannot be read."""
    import yaml

    try:
        return int((yaml.safe_load(config_yaml) or {}).get("steps", 0))
    except (yaml.YAMLError, AttributeError, TypeError, ValueError):
        return 0


def progress(step: int, total: int, width: int = 20) -> str:
    """``/total [#####.....]`` for a known step count, else empty."""
    if total <= 0:
        return ""
    done = min(width, int(width * step / total))
    return f"/{total} [{'#' * done}{'.' * (width - done)}]"


def step_line(ev: Event, total_steps: int = 0) -> str:
    m = ev.metrics
    if ev.stage == "sft":
        return f"[sft ] step {ev.step:4d}  nll {m.get('nll', 0):.3f}"
    seconds = m.get("time_step") or sum(m.get(f"time_{p}", 0.0) for p in PHASES) or 1e-9
    split = " ".join(f"{p[:3]} {m.get(f'time_{p}', 0.0) * 1000:4.0f}" for p in PHASES)
    tps = m.get("completion_tokens", 0.0) / seconds
    lag = f"  lag {m['version_lag']:.2f}/{m.get('version_lag_max', 0):.0f}" if "version_lag" in m else ""
    return (f"[{ev.stage[:4]:<4}] step {ev.step:4d}{progress(ev.step, total_steps)}  reward "
            f"{m.get('reward_mean', 0):.3f}  kl {m.get('kl', 0):.4f}  tok/s {tps:7.0f}{lag}  ms: {split}  "
            f"step {seconds * 1000:4.0f}")


def print_events(events: Iterable[Event], every: int = 1, total: int = 0) -> None:
    """One line per ``every`` steps (with a progress bar when ``total`` is known), evals, state changes, logs."""
    for ev in events:
        if ev.kind == "step" and (ev.step % every == 0 or ev.step == 1):
            print(step_line(ev, total), flush=True)
        elif ev.kind == "eval":
            vals = "  ".join(f"{k} {v:.3f}" for k, v in ev.metrics.items())
            print(f"[{ev.stage[:4]:<4}] eval at step {ev.step}: {vals}", flush=True)
        elif ev.kind in ("state", "log", "update", "checkpoint"):
            print(f"[job ] {ev.state or ''} {ev.message}".rstrip(), flush=True)
