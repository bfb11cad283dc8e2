"""Step size for samples that lag the trainer (asynchronous training with ``max_staleness``)."""

from __future__ import annotations


def staleness_scaled_lr(lr: float, lag: float) -> float:
    """The learning rate of a step whose samples are on average ``lag`` weight versions behind the trainer.

    Staleness-aware asynchronous SGD (Zhang et al. 2016, "Staleness-aware Async-SGD for Distributed Deep
    Learning") divides the step by the gradient's staleness τ: η_τ = η / τ. Here τ = max(1, lag): a lag of up
    to one version — what any overlap of collecting with training costs — keeps η; two versions halve it.

    lr: the step's base learning rate (> 0); lag: the samples' mean version lag (>= 0). Returns a float.
    """
    if lag < 0:
        raise ValueError(f"lag must be >= 0, got {lag}")
    return lr / max(1.0, lag)
