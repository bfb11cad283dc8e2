"""Run directory artifacts: resolved config, metrics JSONL, learning-curve PNG, summary.json, and optionally
TensorBoard event files (``tensorboard/``: every numeric metric as a scalar ``<stage>/<kind>/<name>``)."""

from __future__ import annotations

import json
from pathlib import Path

from alignmesh.services.common import durable


class RunDir:
    def __init__(self, path: str | Path, tensorboard: bool = False):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._metrics = open(self.path / "metrics.jsonl", "a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # the tensorboard extra (checked at submit)

            self._tb = SummaryWriter(str(self.path / "tensorboard"))

    def write_config(self, text: str) -> None:
        (self.path / "config.resolved.yaml").write_text(text)

    def append(self, record: dict) -> None:
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if self._tb is not None:
            for name, value in record["metrics"].items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{record['stage']}/{record['kind']}/{name}", value, record["step"])

    def write_summary(self, summary: dict) -> Path:
        path = self.path / "summary.json"
        durable.write_text(path, json.dumps(summary, indent=2))
        return path

    def close(self) -> None:
        self._metrics.close()
        if self._tb is not None:
            self._tb.close()

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
