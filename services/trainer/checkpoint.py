"""Atomic checkpoints: weights (safetensors), optimizer, RNG states and counters.

Written to a temporary sibling directory, every file fsynced, then renamed into place; a failed write leaves
the previous checkpoint at ``path`` intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_model, save_model

from alignmesh.services.common import durable
from alignmesh.services.common.errors import FailedPrecondition


def _fsync_dir(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to fill; on success it is fsynced and renamed to ``path`` (the
    previous checkpoint is replaced only then); on failure it is removed and ``path`` is untouched."""
    path = Path(path)
    if path.exists() and not (path.is_dir() and (not any(path.iterdir()) or (path / "state.json").is_file())):
        raise FailedPrecondition(f"path: {path} exists and is not a checkpoint (no state.json) nor empty; refusing to replace "
                                 f"it: name a new directory or a previous checkpoint")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        _fsync_dir(tmp)
        durable.replace_dir(tmp, path)  # atomic exchange with a previous checkpoint, parent fsynced
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_hf_dir(model: torch.nn.Module, dest: Path, tokenizer_dir: str | None, state_dict: dict | None = None) -> None:
    """A plain HF model directory (``from_pretrained`` loads it), with the tokenizer files copied beside."""
    model.save_pretrained(dest, state_dict=state_dict)
    if tokenizer_dir:
        for name in os.listdir(tokenizer_dir):
            if name.startswith(("tokenizer", "special_tokens")):
                shutil.copy(Path(tokenizer_dir) / name, dest / name)


def write_hf_files(dest: Path, state_dict: dict[str, torch.Tensor], model_dir: str) -> None:
    """A plain HF model directory from full weights alone (no model object): the source directory's config,
    generation config and tokenizer files, and ``model.safetensors`` with the given tensors."""
    from safetensors.torch import save_file

    dest.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(model_dir):
        if name in ("config.json", "generation_config.json") or name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(Path(model_dir) / name, dest / name)
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(dest / "model.safetensors"),
              metadata={"format": "pt"})


@contextlib.contextmanager
def unshared(model: torch.nn.Module) -> Iterator[None]:
    """Parameters laid out in shared flat buckets for the weight push (``buckets.lay_out``) each get storage of
    their own for the duration — safetensors and ``save_pretrained`` refuse tensors that share memory — and then go
    back into their buckets with the values they have by then (a load writes them)."""
    params = list(model.parameters())
    views = [p.data for p in params]
    for p in params:
        p.data = p.data.clone()
    try:
        yield
    finally:
        with torch.no_grad():
            for p, view in zip(params, views):
                view.copy_(p.data)
                p.data = view


def save(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict,
         export_hf: bool = False, tokenizer_dir: str | None = None) -> Path:
    with atomic_dir(path) as tmp, unshared(model):
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        if export_hf and hasattr(model, "peft_config"):  # LoRA: the merged model, and the adapter in peft's format
            from alignmesh.services.models import lora

            write_hf_dir(lora.merged(model), tmp / "hf", tokenizer_dir)
            lora.export(model, tmp / "adapter")
        elif export_hf:
            write_hf_dir(model, tmp / "hf", tokenizer_dir)
    return Path(path)


def load(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    path = Path(path)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{path} holds no checkpoint (no state.json)")
    with unshared(model):
        load_model(model, str(path / "model.safetensors"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    return json.loads((path / "state.json").read_text())
