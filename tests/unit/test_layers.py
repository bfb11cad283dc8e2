"""The package's layering, held by CI: every import statement in the package (function-level ones included, since
they run too) is an arrow, and these arrows are forbidden (docs/architecture.md draws the layers):

- ``services`` never imports ``coordinator``, ``clients`` or ``deploy``;
- a role (``services.rollout``, ``reward``, ``reference``, ``trainer``, ``environment``) never imports another role;
- ``coordinator`` never imports a role, ``clients`` or ``deploy``;
- nothing but ``deploy`` imports ``deploy`` (the launcher sits on top);
- the client (``clients``, and the ``alignmesh`` entry point's module-level imports) reaches, transitively, only
  ``protos``, ``clients`` and the torch-free core, and of third-party code only grpcio, protobuf and pyyaml.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("protos", "services", "coordinator", "clients", "deploy")
ROLES = ("rollout", "reward", "reference", "trainer", "environment")
CORE = {"alignmesh.services.common.errors", "alignmesh.services.common.config", "alignmesh.services.common.settings",
        "alignmesh.services.common.registry",
        # the job schema: one definition, checked by the client before a submit and by the coordinator
        "alignmesh.coordinator", "alignmesh.coordinator.config"}
CLIENT_THIRD_PARTY = {"grpc", "google", "yaml"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(("alignmesh", *parts))


def collect() -> dict[str, tuple[Path, list[tuple[str, bool]]]]:
    """module -> (file, [(imported module, at module level?)])."""
    modules = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            modules[module_name(path)] = (path, [])
    modules["alignmesh"] = (ROOT / "__init__.py", [])
    for name, (path, out) in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                out += [(a.name, id(node) in top) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:  # `from pkg import submodule` imports the submodule
                    sub = f"{node.module}.{a.name}"
                    out.append((sub if sub in modules else node.module, id(node) in top))
    return modules


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def role_of(module: str) -> str | None:
    return next((r for r in ROLES if within(module, f"alignmesh.services.{r}")), None)


def violations(modules) -> list[str]:
    bad = []
    for src, (_, imports) in modules.items():
        for dst, _ in imports:
            if not within(dst, "alignmesh"):
                continue
            arrow = f"{src} -> {dst}"
            if within(src, "alignmesh.services") and any(within(dst, f"alignmesh.{p}") for p in
                                                           ("coordinator", "clients", "deploy")):
                bad.append(f"services import an upper layer: {arrow}")
            if role_of(src) and role_of(dst) and role_of(src) != role_of(dst):
                bad.append(f"a role imports another role: {arrow}")
            if within(src, "alignmesh.coordinator") and (role_of(dst) or within(dst, "alignmesh.clients")
                                                         or within(dst, "alignmesh.deploy")):
                bad.append(f"the coordinator imports a role or the client: {arrow}")
            if within(dst, "alignmesh.deploy") and not within(src, "alignmesh.deploy"):
                bad.append(f"only the launcher imports the launcher: {arrow}")
    return bad


def closure(modules, start: str, module_level_only_at_start: bool = False) -> tuple[set[str], set[str]]:
    """(alignmesh modules, third-party top-level names) reachable from ``start``."""
    seen, third, todo = set(), set(), [(start, True)]
    while todo:
        name, first = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for dst, top in modules[name][1]:
            if first and module_level_only_at_start and not top:
                continue
            if within(dst, "alignmesh"):
                if dst in modules:
                    todo.append((dst, False))
                parent = dst.rsplit(".", 1)[0]  # importing a.b.c runs a/b/__init__ too
                while parent != "alignmesh" and parent in modules:
                    todo.append((parent, False))
                    parent = parent.rsplit(".", 1)[0]
            else:
                third.add(dst.split(".")[0])
    return seen, third - set(sys.stdlib_module_names) - {"__future__"}


def client_problems(modules, start: str, module_level_only_at_start: bool = False) -> list[str]:
    reached, third = closure(modules, start, module_level_only_at_start)
    allowed = {"alignmesh", "alignmesh.services", "alignmesh.services.common"} | CORE
    out = [f"{start} reaches {m}" for m in sorted(reached) if not (
        m in allowed or within(m, "alignmesh.protos") or within(m, "alignmesh.clients") or m == start)]
    return out + [f"{start} needs third-party {t!r}" for t in sorted(third - CLIENT_THIRD_PARTY)]


def test_no_forbidden_arrow():
    assert violations(collect()) == []


def test_the_client_reaches_only_protos_and_the_torch_free_core():
    modules = collect()
    problems = []
    for name in modules:
        if within(name, "alignmesh.clients"):
            problems += client_problems(modules, name)
    problems += client_problems(modules, "alignmesh.deploy.cli", module_level_only_at_start=True)
    problems += client_problems(modules, "alignmesh")
    assert problems == []


def test_the_checker_catches_each_kind_of_arrow():
    modules = collect()
    planted = {
        "alignmesh.services.sync.group": "alignmesh.coordinator.jobs",
        "alignmesh.services.reward.rules": "alignmesh.services.trainer.losses",
        "alignmesh.coordinator.data": "alignmesh.services.rollout.backend",
        "alignmesh.clients.client": "alignmesh.deploy.local",
    }
    for src, dst in planted.items():
        modules[src][1].append((dst, True))
    found = violations(modules)
    assert len(found) == len(planted), found
    modules["alignmesh.clients.progress"][1].append(("torch", False))  # even inside a function
    assert "alignmesh.clients.progress needs third-party 'torch'" in client_problems(modules,
                                                                                      "alignmesh.clients.progress")
