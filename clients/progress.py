"""Terminal rendering of job events."""

from __future__ import annotations

import sys
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


def print_events(events: Iterable[Event], every: int = 1, total: int = 0, live: bool | None = None) -> None:
    """Job events for a person. On a terminal (``live``, default: stdout is a TTY): one progress bar per stage,
    redrawn in place (steps, ETA, reward, accuracy at the last eval), with evals, state changes and logs printed
    above it. Otherwise: one line per ``every`` steps (with a progress bar when ``total`` is known) and the rest."""
    live = sys.stdout.isatty() if live is None else live
    bar = LiveBar(total) if live else None
    for ev in events:
        if ev.kind == "step":
            if bar is not None:
                bar.step(ev)
            elif ev.step % every == 0 or ev.step == 1:
                print(step_line(ev, total), flush=True)
            continue
        if ev.kind == "eval":
            vals = "  ".join(f"{k} {v:.3f}" for k, v in ev.metrics.items())
            line = f"[{ev.stage[:4]:<4}] eval at step {ev.step}: {vals}"
            if bar is not None:
                bar.evaluated(ev)
        elif ev.kind in ("state", "log", "update", "checkpoint"):
            line = f"[job ] {ev.state or ''} {ev.message}".rstrip()
        else:
            continue
        if bar is not None:
            bar.above(line)
        else:
            print(line, flush=True)
    if bar is not None:
        bar.close()


class LiveBar:
    """The current stage's bar on the last terminal line: ``\r``-redrawn, finished with a newline when the stage
    changes or a message is printed above it."""

    def __init__(self, total: int, width: int = 24):
        self.total, self.width = total, width
        self.stage, self.first, self.last, self.text = "", None, None, ""
        self.accuracy: dict[str, float] = {}

    def step(self, ev: Event) -> None:
        if ev.stage != self.stage:
            self._newline()
            self.stage, self.first = ev.stage, (ev.step, ev.time)
        self.last = ev
        self._draw()

    def evaluated(self, ev: Event) -> None:
        value = ev.metrics.get("accuracy", ev.metrics.get("dev_accuracy"))
        if value is not None:
            self.accuracy[ev.stage] = value

    def above(self, line: str) -> None:
        sys.stdout.write("\r\033[K" + line + "\n")
        self._draw()

    def close(self) -> None:
        self._newline()

    def _draw(self) -> None:
        if self.last is None:
            return
        ev, m = self.last, self.last.metrics
        total = self.total if ev.stage == "main" else 0
        done = min(self.width, int(self.width * ev.step / total)) if total else 0
        bar = f"[{'#' * done}{'.' * (self.width - done)}] {ev.step}/{total}" if total else f"step {ev.step}"
        parts = [f"[{ev.stage[:4]:<4}] {bar}", eta(self.first, ev, total)]
        if "reward_mean" in m:
            parts.append(f"reward {m['reward_mean']:.3f}")
        if "nll" in m:
            parts.append(f"nll {m['nll']:.3f}")
        if m.get("version_lag_max"):
            parts.append(f"lag {m['version_lag']:.2f}/{m['version_lag_max']:.0f}")
        if ev.stage in self.accuracy:
            parts.append(f"accuracy {self.accuracy[ev.stage]:.3f}")
        self.text = "  ".join(p for p in parts if p)
        sys.stdout.write("\r\033[K" + self.text)
        sys.stdout.flush()

    def _newline(self) -> None:
        if self.text:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.text = ""


def eta(first: tuple[int, float] | None, ev: Event, total: int) -> str:
    """``ETA 1m05s`` from the rate since the stage's first step seen (event times), or empty when unknown."""
    if not total or first is None or ev.step <= first[0] or ev.time <= first[1]:
        return ""
    seconds = (ev.time - first[1]) / (ev.step - first[0]) * max(0, total - ev.step)
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"ETA {minutes}m{secs:02d}s" if minutes else f"ETA {secs}s"
