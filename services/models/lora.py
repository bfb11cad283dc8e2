"""LoRA adapters (peft) on the policy: the trainer trains only the adapters, the weight push moves only them, the
rollout and reference hold the same adapters over the same frozen base (the cluster's ``model``).

Directories a LoRA role loads: a peft adapter directory (``adapter_config.json``: its adapter weights), or the
base model directory itself (adapters reset to their initial values: B = 0, so base + adapters = the base).
"""

from __future__ import annotations

from pathlib import Path

import torch

from alignmesh.services.common.errors import FailedPrecondition

ADAPTER_FILE = "adapter_config.json"


def apply(model: torch.nn.Module, lora) -> torch.nn.Module:
    """``model`` wrapped with LoRA adapters per ``lora`` (settings.LoraConfig); the base frozen, adapters trainable.
    The adapters' initial values are fixed by a seed of their own (every role starts from the same ones)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")
    with torch.random.fork_rng():
        torch.manual_seed(lora.seed)
        return get_peft_model(model, config)


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_FILE).is_file()


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def adapter_state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.clone() for n, t in adapter_state(model).items()}


def adapter_weights_from(model: torch.nn.Module, path: str | Path, base_path: str | Path,
                         initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter values a LoRA role takes from ``path``: a peft adapter directory's, or (the base model's own
    directory) the initial ones. Any other model directory is refused: the base is the cluster's model."""
    if is_adapter_dir(path):
        return read_adapter(model, path)
    if Path(path).resolve() == Path(base_path).resolve():
        return {n: t.clone() for n, t in initial.items()}
    raise FailedPrecondition(f"path: {path} is a full model, but with lora the base is the cluster's model "
                             f"({base_path}); give a peft adapter directory (adapter_config.json) or the base")


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapters as the model names them (the trainable parameters)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def read_adapter(model: torch.nn.Module, path: str | Path) -> dict[str, torch.Tensor]:
    """A peft adapter directory's weights, keyed as ``model`` names its adapters (peft's files leave out the
    adapter's name, ``default``); refused by name when they are not exactly this model's adapters."""
    from safetensors.torch import load_file

    own = adapter_state(model)
    weights = load_file(str(Path(path) / "adapter_model.safetensors"))
    out = {}
    for key, tensor in weights.items():
        for part in ("lora_A", "lora_B"):
            key = key.replace(f".{part}.weight", f".{part}.default.weight")
        out[key] = tensor
    if out.keys() != own.keys():
        extra, missing = sorted(out.keys() - own.keys()), sorted(own.keys() - out.keys())
        raise FailedPrecondition(f"path: {path} is not an adapter of this model's LoRA (target_modules, r): "
                                 f"unexpected {extra[:2]}, missing {missing[:2]}")
    for key, tensor in out.items():
        if tensor.shape != own[key].shape:
            raise FailedPrecondition(f"path: {path}: {key} is {list(tensor.shape)}, this model's is "
                                     f"{list(own[key].shape)} (a different r?)")
    return {k: v.to(own[k].dtype) for k, v in out.items()}


def export(model: torch.nn.Module, dest: Path) -> None:
    """The adapter in peft's own format (``adapter_config.json``, ``adapter_model.safetensors``)."""
    model.save_pretrained(str(dest))


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """A plain model with the adapters merged into a copy of the base weights (for an HF export)."""
    import copy

    return copy.deepcopy(model).merge_and_unload()


def merged_weights(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The base model's weights with the adapters merged in (W + scale · B A for every adapted linear layer), under
    the plain model's own parameter names, in its order: what a receiver without LoRA holds (the vLLM rollout).
    The model itself is not touched (merging in place and unmerging again would drift the frozen base)."""
    from peft.tuners.lora import LoraLayer

    deltas = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer):
                delta = sum(module.get_delta_weight(a) for a in module.active_adapters)
                deltas[f"{name}.base_layer.weight"] = delta
        return [(plain_name(n), p.detach() + deltas[n] if n in deltas else p.detach())
                for n, p in model.named_parameters() if ".lora_" not in n]


def plain_name(name: str) -> str:
    """peft's name of a base parameter -> the plain model's (``base_model.model.`` and ``.base_layer`` removed)."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")
