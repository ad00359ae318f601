"""The committed gRPC code in ``bridges/generated`` is exactly what ``make proto`` produces now.

The test runs the Makefile's own ``proto`` recipe, redirected to a temporary directory. A proto
change committed without regenerating fails here, and so does a grpcio-tools upgrade (the
generated files name the protoc version): run ``make proto`` and commit the result.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "bridges" / "generated"
FILES = ("vsync_bridge_pb2.py", "vsync_bridge_pb2.pyi", "vsync_bridge_pb2_grpc.py")


def proto_recipe() -> list[str]:
    """The shell lines of the Makefile's ``proto`` target, backslash continuations joined."""
    text = (ROOT / "Makefile").read_text("utf-8").replace("\\\n", " ")
    match = re.search(r"^proto:.*\n((?:\t.*\n?)+)", text, re.MULTILINE)
    assert match, "the Makefile has no `proto` target"
    return [line.strip() for line in match.group(1).splitlines() if line.strip()]


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    for line in proto_recipe():
        assert "bridges/generated" in line, f"unexpected line in the proto recipe: {line}"
        command = line.replace("$(BIN)/python", shlex.quote(sys.executable)).replace(
            "bridges/generated", shlex.quote(str(tmp_path)))
        assert "$(" not in command, f"the proto recipe uses a make variable this test does not know: {line}"
        done = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"`{command}` failed: {done.stderr}"
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
