import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_generated_stubs_match_the_protos():
    out = subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--check"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr


def test_protos_use_versioned_packages():
    for proto in (ROOT / "protos").rglob("*.proto"):
        role, version = proto.parent.parent.name, proto.parent.name
        assert f"package alignmesh.{role}.{version};" in proto.read_text(), proto
