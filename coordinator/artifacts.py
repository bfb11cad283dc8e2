"""Run directory artifacts: resolved config, metrics JSONL, learning-curve PNG, summary.json; each record and the
summary also go to the job's experiment trackers (``coordinator/trackers.py``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from alignmesh.services.common import durable


log = logging.getLogger("alignmesh.runs")


class RunDir:
    def __init__(self, path: str | Path, on_tracker_error=None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._metrics = open(self.path / "metrics.jsonl", "a")
        self.trackers: dict = {}
        self._on_tracker_error = on_tracker_error or (lambda name, exc: None)

    def _each_tracker(self, call) -> None:
        """``call(tracker)`` on every tracker; one that raises is closed, dropped and reported once."""
        for name, tracker in list(self.trackers.items()):
            try:
                call(tracker)
            except Exception as exc:
                log.exception("tracker %s failed; metrics.jsonl keeps the record", name)
                self.trackers.pop(name)
                self._on_tracker_error(name, exc)

    def write_config(self, text: str) -> None:
        (self.path / "config.resolved.yaml").write_text(text)

    def append(self, record: dict) -> None:
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        self._each_tracker(lambda t: t.log(record))

    def write_summary(self, summary: dict) -> Path:
        path = self.path / "summary.json"
        durable.write_text(path, json.dumps(summary, indent=2))
        self._each_tracker(lambda t: t.summary(summary))
        return path

    def close(self) -> None:
        self._metrics.close()
        self._each_tracker(lambda t: t.close())
        self.trackers = {}

    def plot(self) -> Path | None:
        """Held-out accuracy and step reward against step, one panel per stage."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [json.loads(line) for line in (self.path / "metrics.jsonl").read_text().splitlines() if line]
        evals = [r for r in rows if r["kind"] == "eval"]
        steps = [r for r in rows if r["kind"] == "step" and "reward_mean" in r["metrics"]]
        if not evals and not steps:
            return None
        fig, ax = plt.subplots(figsize=(7, 4))
        if steps:
            ax.plot([r["step"] for r in steps], [r["metrics"]["reward_mean"] for r in steps], alpha=0.4,
                    label="sample reward (mean)")
        for key in ("accuracy", "dev_accuracy"):
            pts = [(r["step"], r["metrics"][key]) for r in evals if key in r["metrics"] and r["stage"] != "sft"]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"held-out greedy {key.replace('_', ' ')}")
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        out = self.path / "curve.png"
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out
