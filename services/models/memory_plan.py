"""Bytes per parameter per role, and what fits on a GPU: the arithmetic behind docs/memory.md.

    python -m alignmesh.services.models.memory_plan            # the tables for 0.5B-70B on 80 and 141 GB GPUs

Weights, gradients and optimizer state only: activations and the rollout's KV cache come on top (the tables say
how much room is left for them). ``tests/unit/services/models/test_memory_plan.py`` checks these numbers against
the bytes the real backends hold for the tiny models.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
MODELS = {"0.5B": 0.5e9, "7B": 7.0e9, "32B": 32.0e9, "70B": 70.0e9}
GPUS = {"80 GB": 80e9, "141 GB": 141e9}
HEADROOM = 0.9  # of a GPU's memory usable for these bytes (the rest: CUDA context, fragmentation)


def trainer_bytes(params: float, zero_stage: int = 0, ranks: int = 1) -> float:
    """Per rank, AdamW with fp32 master weights (also under bf16 autocast): weights 4, gradients 4, moments 8;
    ZeRO-1 shards the moments, ZeRO-2 the gradients too, ZeRO-3 the weights too."""
    weights, grads, moments = 4 * params, 4 * params, 8 * params
    if zero_stage >= 1:
        moments /= ranks
    if zero_stage >= 2:
        grads /= ranks
    if zero_stage >= 3:
        weights /= ranks
    return weights + grads + moments


def lora_trainer_bytes(base_params: float, adapter_params: float, base_dtype: str = "float32") -> float:
    """A frozen base (no gradients, no optimizer state) plus adapters trained like a full model."""
    return DTYPE_BYTES[base_dtype] * base_params + 16 * adapter_params


def serving_bytes(params: float, dtype: str = "bfloat16", shards: int = 1) -> float:
    """A rollout or reference replica's weights (per tensor-parallel shard)."""
    return DTYPE_BYTES[dtype] * params / shards


@dataclass
class Placement:
    name: str
    per_gpu: float  # peak bytes per GPU
    note: str


def placements(params: float, gpus: int = 8, dtype: str = "bfloat16") -> list[Placement]:
    """An 8-GPU node, three ways: separate groups (trainer ZeRO-3 over 6 GPUs, a rollout replica and a reference
    on one GPU each, tensor parallel when their weights do not fit), every role sharded over all 8 GPUs side by
    side, and the same colocated with Sleep/Wake (the peak is the weight push, when trainer and rollout are awake
    together; while generating only the rollout is resident)."""
    train_gpus = gpus - 2
    separate = max(trainer_bytes(params, 3, train_gpus), serving_bytes(params, dtype))
    shared = trainer_bytes(params, 3, gpus) + 2 * serving_bytes(params, dtype, gpus)
    colocated = trainer_bytes(params, 3, gpus) + serving_bytes(params, dtype, gpus)
    return [Placement(f"separate: trainer ZeRO-3 x{train_gpus}, rollout x1, reference x1", separate,
                      "the larger of the trainer's share and one replica's weights"),
            Placement(f"all roles on all {gpus} GPUs, always resident", shared, "trainer + rollout + reference"),
            Placement(f"colocated on {gpus} GPUs with Sleep/Wake", colocated,
                      "peak at the weight push (trainer + rollout); generating: rollout alone")]


def tables() -> str:
    out = ["| model | role / placement | bytes | " + " | ".join(f"fits {g}?" for g in GPUS) + " |",
           "|---|---|---:|" + "---:|" * len(GPUS)]
    for name, params in MODELS.items():
        rows = [("trainer, one GPU, AdamW", trainer_bytes(params)),
                ("rollout or reference replica, bf16", serving_bytes(params)),
                ("LoRA trainer (bf16 base, adapters 1%)", lora_trainer_bytes(params, 0.01 * params, "bfloat16"))]
        rows += [(p.name, p.per_gpu) for p in placements(params)]
        for what, nbytes in rows:
            fits = [_fits(nbytes, cap) for cap in GPUS.values()]
            out.append(f"| {name} | {what} | {nbytes / 1e9:.1f} GB | " + " | ".join(fits) + " |")
    return "\n".join(out)


def _fits(nbytes: float, capacity: float) -> str:
    room = HEADROOM * capacity - nbytes
    if room >= 0:
        return f"yes, {room / 1e9:.0f} GB left"
    return f"no, {math.ceil(nbytes / (HEADROOM * capacity))}x over"


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    print(tables())


if __name__ == "__main__":
    main()
