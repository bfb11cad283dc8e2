"""Shared fixtures. Every test process pins torch to one thread (two cores are shared with services)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
# The CLI reads a client config file from the user's home; tests get an empty config directory of their own.
for _name in ("ALIGNMESH_CLIENT_CONFIG", "ALIGNMESH_COORDINATOR", "ALIGNMESH_TOKEN"):
    os.environ.pop(_name, None)
os.environ["XDG_CONFIG_HOME"] = __import__("tempfile").mkdtemp(prefix="alignmesh-test-config-")
__import__("atexit").register(__import__("shutil").rmtree, os.environ["XDG_CONFIG_HOME"], True)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from alignmesh.services.models.tiny import create_model_dir

    return create_model_dir(tmp_path_factory.mktemp("models") / "tiny", seed=0)
