"""``vsync-stream --help``: the product's commands first, one line each; Faust's generic ones hidden."""

from __future__ import annotations

import os
import subprocess
import sys

from vsync_stream.cli import FAUST_COMMANDS_SHOWN, PRODUCT_COMMANDS

FAUST_GENERIC = ("agents", "clean-versions", "completion", "livecheck", "model", "models", "reset", "send", "tables")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "vsync_stream", *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def test_help_lists_the_product_commands_first_with_one_line_each() -> None:
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    section = result.stdout.split("Commands:\n", 1)[1].splitlines()
    names = [line.split()[0] for line in section if line.startswith("  ") and not line.startswith("   ")]
    assert names[:len(PRODUCT_COMMANDS)] == list(PRODUCT_COMMANDS), names
    assert all(line.startswith("  ") and not line.startswith("   ") for line in section if line.strip()), (
        "a description wraps onto a second line:\n" + "\n".join(section))
    for line in section:
        if line.strip():
            assert len(line.split(None, 1)) == 2, f"no description: {line!r}"
    for name in FAUST_GENERIC:
        assert name not in names, f"Faust's generic command {name} is listed"
    assert set(FAUST_COMMANDS_SHOWN) <= set(names)


def test_hidden_faust_commands_still_run_when_named() -> None:
    result = _run("tables", "--help")
    assert result.returncode == 0 and "List available tables" in result.stdout, result.stderr


def test_the_lines_fit_80_columns() -> None:
    width = max(map(len, PRODUCT_COMMANDS))
    assert all(len(text) <= 80 - width - 4 for text in PRODUCT_COMMANDS.values())
