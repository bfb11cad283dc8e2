"""Load any local HF-format causal LM directory (the embedded default included)."""

from __future__ import annotations

from pathlib import Path

from alignmesh.services.common.errors import ConfigError


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    quiet_transformers()
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str | Path, device: str = "cpu", dtype: str = "float32", lora=None):
    """The model in ``dtype`` ("float32", "bfloat16", "float16") on ``device``; with ``lora`` (settings.LoraConfig)
    wrapped with LoRA adapters (``services/models/lora.py``)."""
    import torch
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    if not (Path(path) / "config.json").is_file():
        raise ConfigError(f"model: {path} is not a model directory (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))
    if lora is not None:
        from alignmesh.services.models import lora as adapters

        model = adapters.apply(model, lora)
    return model.to(device)
