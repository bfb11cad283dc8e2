"""Terminal rendering of job events."""

from __future__ import annotations

from typing import Iterable

from alignmesh.clients.client import Event

PHASES = ("generate", "reward", "reference", "train", "sync")


def step_line(ev: Event) -> str:
    m = ev.metrics
    if ev.stage == "sft":
        return f"[sft ] step {ev.step:4d}  nll {m.get('nll', 0):.3f}"
    total = sum(m.get(f"time_{p}", 0.0) for p in PHASES) or 1e-9
    split = " ".join(f"{p[:3]} {m.get(f'time_{p}', 0.0) * 1000:4.0f}" for p in PHASES)
    tps = m.get("completion_tokens", 0.0) / total
    return (f"[{ev.stage[:4]:<4}] step {ev.step:4d}  reward {m.get('reward_mean', 0):.3f}  kl {m.get('kl', 0):.4f}  "
            f"tok/s {tps:7.0f}  ms: {split}")


def print_events(events: Iterable[Event], every: int = 1) -> None:
    for ev in events:
        if ev.kind == "step" and (ev.step % every == 0 or ev.step == 1):
            print(step_line(ev), flush=True)
        elif ev.kind == "eval":
            vals = "  ".join(f"{k} {v:.3f}" for k, v in ev.metrics.items())
            print(f"[{ev.stage[:4]:<4}] eval at step {ev.step}: {vals}", flush=True)
        elif ev.kind in ("state", "log"):
            print(f"[job ] {ev.state or ''} {ev.message}".rstrip(), flush=True)
