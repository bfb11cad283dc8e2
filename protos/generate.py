"""Generate the Python stubs (``*_pb2.py``, ``*_pb2.pyi``, ``*_pb2_grpc.py``) from ``protos/**.proto``.

Usage::

    python protos/generate.py          # (re)write the stubs beside the .proto files
    python protos/generate.py --check  # exit 1 when the committed stubs are stale

The stubs are importable as ``alignmesh.protos.<role>.v1.<name>_pb2``. Output is reproducible for a pinned
``grpcio-tools`` (see the ``dev`` extra in pyproject.toml).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _generate(out_dir: Path) -> dict[str, bytes]:
    from grpc_tools import protoc
    import grpc_tools

    src = out_dir / "src" / "alignmesh" / "protos"
    gen = out_dir / "gen"
    gen.mkdir(parents=True)
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    for proto in protos:
        dest = src / proto.relative_to(PROTO_ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(proto, dest)
    include = Path(grpc_tools.__file__).parent / "_proto"
    rel = [str(Path("alignmesh/protos") / p.relative_to(PROTO_ROOT)) for p in protos]
    args = ["protoc", f"-I{out_dir / 'src'}", f"-I{include}", f"--python_out={gen}", f"--pyi_out={gen}",
            f"--grpc_python_out={gen}", *rel]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    result = {}
    for path in (gen / "alignmesh" / "protos").rglob("*"):
        if path.is_file() and path.name.endswith(SUFFIXES):
            result[str(path.relative_to(gen / "alignmesh" / "protos"))] = path.read_bytes()
    return result


def _packages(files: dict[str, bytes]) -> set[Path]:
    dirs = set()
    for rel in files:
        parent = Path(rel).parent
        while parent != Path("."):
            dirs.add(parent)
            parent = parent.parent
    return dirs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when committed stubs differ")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        files = _generate(Path(tmp))
    stale = []
    for rel, data in sorted(files.items()):
        target = PROTO_ROOT / rel
        if target.exists() and target.read_bytes() == data:
            continue
        stale.append(rel)
        if not args.check:
            target.write_bytes(data)
    existing = {str(p.relative_to(PROTO_ROOT)) for s in SUFFIXES for p in PROTO_ROOT.rglob(f"*{s}")}
    extra = sorted(existing - set(files))
    for rel in extra:
        stale.append(rel)
        if not args.check:
            (PROTO_ROOT / rel).unlink()
    for pkg in _packages(files):
        init = PROTO_ROOT / pkg / "__init__.py"
        if not init.exists():
            stale.append(str(init.relative_to(PROTO_ROOT)))
            if not args.check:
                init.write_text("")
    if args.check and stale:
        print("stale generated stubs (run: python protos/generate.py):", *stale, sep="\n  ", file=sys.stderr)
        return 1
    print(f"{len(files)} stub files {'checked' if args.check else 'generated'}; {len(stale)} changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
