"""Every package of the tree is in pyproject.toml's explicit package list: an editable install finds any folder,
but a wheel (the images, a client install) ships only the listed ones."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"alignmesh"}
    for init in ROOT.rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts and rel.parts[0] in ("protos", "services", "coordinator", "clients", "deploy"):
            found.add(".".join(("alignmesh", *rel.parts)))
    assert found - listed == set(), "add these to [tool.setuptools] packages"
