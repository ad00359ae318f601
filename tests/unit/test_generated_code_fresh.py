"""The committed gRPC code in ``bridges/generated`` is exactly what ``make proto`` produces now.

The command below must stay identical to the Makefile's ``proto`` target (with ``OUT`` standing
for ``bridges/generated``). A proto change committed without regenerating fails here, and so does
a grpcio-tools upgrade (the generated files name the protoc version): run ``make proto`` and
commit the result.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "bridges" / "generated"
FILES = ("vsync_bridge_pb2.py", "vsync_bridge_pb2.pyi", "vsync_bridge_pb2_grpc.py")

# The `make proto` recipe, with $(PYTHON) -> {python} and bridges/generated -> {out}.
PROTO_COMMAND = (
    "{python} -m grpc_tools.protoc -Ibridges/proto --python_out={out} --pyi_out={out} "
    "--grpc_python_out={out} bridges/proto/vsync_bridge.proto"
    " && sed -i.bak -e 's/^import vsync_bridge_pb2 as /from vsync_stream.bridges.generated import vsync_bridge_pb2 as /'"
    " {out}/vsync_bridge_pb2_grpc.py && rm {out}/vsync_bridge_pb2_grpc.py.bak"
)


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    command = PROTO_COMMAND.format(python=shlex.quote(sys.executable), out=shlex.quote(str(tmp_path)))
    done = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"protoc failed: {done.stderr}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)
    stale = [name for name in FILES if (tmp_path / name).read_bytes() != (GENERATED / name).read_bytes()]
    assert not stale, f"bridges/generated is stale ({', '.join(stale)}): run `make proto` and commit the result"


def test_grpc_module_imports_the_messages_through_the_package() -> None:
    text = (GENERATED / "vsync_bridge_pb2_grpc.py").read_text("utf-8")
    assert "from vsync_stream.bridges.generated import vsync_bridge_pb2 as vsync__bridge__pb2" in text
    assert "\nimport vsync_bridge_pb2" not in text


@pytest.mark.parametrize("module", ["vsync_bridge_pb2", "vsync_bridge_pb2_grpc"])
def test_generated_modules_import(module: str) -> None:
    __import__(f"vsync_stream.bridges.generated.{module}")
