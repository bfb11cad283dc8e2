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


def own_storage(model) -> None:
    """Give every parameter and buffer memory of its own. transformers leaves CPU weights as views of the
    memory-mapped safetensors file: a file replaced on disk under a running service could change them, their pages
    count as the file's, and offloading them (Sleep) would free nothing while any view is left."""
    import torch

    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.device.type == "cpu":
                t.data = t.data.clone()


def load_causal_lm(path: str | Path, device: str = "cpu", dtype: str = "float32", lora=None):
    """The model in ``dtype`` ("float32", "bfloat16", "float16") on ``device``; with ``lora`` (settings.LoraConfig)
    wrapped with LoRA adapters (``services/models/lora.py``)."""
    import torch
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    if not (Path(path) / "config.json").is_file():
        raise ConfigError(f"model: {path} is not a model directory (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))
    own_storage(model)
    if lora is not None:
        from alignmesh.services.models import lora as adapters

        model = adapters.apply(model, lora)
    return model.to(device)
