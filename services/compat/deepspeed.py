"""DeepSpeed shims (target: deepspeed 0.19.8)."""

from __future__ import annotations

import os

TARGET_VERSION = "0.19.8"


def launcher_env(rank: int, local_rank: int, world_size: int) -> None:
    """Set the variables DeepSpeed's launcher would set.

    ``DeepSpeedEngine`` asserts that ``LOCAL_RANK`` is in the environment even when the caller has already
    initialised ``torch.distributed`` and passes ``dist_init_required=False`` (deepspeed 0.19.8,
    ``engine._do_args_sanity_check``). Our trainer starts its own ranks, so it states them here.
    """
    os.environ["LOCAL_RANK"] = str(local_rank)
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)


_CACHED_GROUPS = ("_WORLD_GROUP", "_ZERO_PARAM_INTRA_PARALLEL_GROUP", "_TENSOR_MODEL_PARALLEL_GROUP",
                  "_MODEL_PARALLEL_GROUP", "_DATA_PARALLEL_GROUP")
_CACHED_GROUP_MAPS = ("_EXPERT_PARALLEL_GROUP", "_EXPERT_PARALLEL_GROUP_RANKS", "_EXPERT_DATA_PARALLEL_GROUP",
                      "_EXPERT_DATA_PARALLEL_GROUP_RANKS", "_ALL_TO_ALL_GROUP")


def forget_groups() -> None:
    """Drop the process groups DeepSpeed cached module-wide, after ``destroy_process_group``.

    deepspeed 0.19.8 (``deepspeed.utils.groups``) keeps the first world/data-parallel group it sees for the life
    of the process; an engine built after the default group was destroyed and formed again then fails with
    "Group ... is not registered". A trainer that is closed and started again in one process needs this.
    """
    from deepspeed.utils import groups

    for name in _CACHED_GROUPS:
        setattr(groups, name, None)
    for name in _CACHED_GROUP_MAPS:
        setattr(groups, name, {})
