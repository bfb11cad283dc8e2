"""Shared fixtures. Every test process pins torch to one thread (two cores are shared with services)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from alignmesh.services.models.tiny import create_model_dir

    return create_model_dir(tmp_path_factory.mktemp("models") / "tiny", seed=0)
