"""The operator commands on CID files: ``vsync-stream vsync`` and ``vsync-stream diff``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.factories import official_vectors
from vsync_stream.cidtools import diff_command, vsync_command
from vsync_stream.domain.vsync import EMPTY_VSYNC

VECTORS = official_vectors()
OFFICIAL = VECTORS["vsync"][0]
A, B, C = OFFICIAL["cids"]
D = "00" * 31 + "01"


def _write(path: Path, *lines: str) -> str:
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


def test_command_names() -> None:
    assert (vsync_command.name, diff_command.name) == ("vsync", "diff")


def test_vsync_of_the_official_vectors(tmp_path: Path) -> None:
    result = CliRunner().invoke(vsync_command, [_write(tmp_path / "f.cids", A, B, C)])
    assert result.exit_code == 0, result.output
    assert result.stdout == OFFICIAL["vsync"] + "\n"
    assert OFFICIAL["vsync"] == "996fc1dd3b6b14bcf0c9fe8320eb66d7e2a3fd874ccf767b2e939641b1ea8eaf"


def test_vsync_reads_stdin_in_any_hex_case() -> None:
    result = CliRunner().invoke(vsync_command, ["-"], input=f"{A.upper()}\n{B}\n{C.upper()}\n")
    assert (result.exit_code, result.stdout) == (0, OFFICIAL["vsync"] + "\n")


def test_vsync_of_an_empty_file_is_64_zeros(tmp_path: Path) -> None:
    result = CliRunner().invoke(vsync_command, [_write(tmp_path / "empty.cids")])
    assert (result.exit_code, result.stdout) == (0, EMPTY_VSYNC + "\n")


@pytest.mark.parametrize(("content", "reason"), [
    (f"{A}\n{B[:-1]}\n{C}\n", "line 2: has 63 characters"),
    (f"{A}\n{B}\n{C}", "line 3: has no final newline"),
    (f"{A}\r\n{B}\r\n", "line 1: ends with CR LF"),
    (f"{A}\n{B}\n{C[:5]}z{C[6:]}\n", "line 3: has a non-hex character b'z' at column 6"),
])
def test_vsync_bad_line_fails_with_its_line_number(content: str, reason: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.cids"
    path.write_text(content)
    result = CliRunner().invoke(vsync_command, [str(path)])
    assert result.exit_code == 1
    assert f"{path}: {reason}" in result.stderr
    assert result.stdout == ""


def test_vsync_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(vsync_command, [str(tmp_path / "nope.cids")])
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_diff_counts(tmp_path: Path) -> None:
    local = _write(tmp_path / "local.cids", A, B, C)
    remote = _write(tmp_path / "remote.cids", C.upper(), D, A)
    result = CliRunner().invoke(diff_command, [local, remote])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:3] == ["only in LOCAL:  1", "only in REMOTE: 1", "common:         2"]
    assert lines[3].startswith(f"LOCAL   3 CIDs, VSync {OFFICIAL['vsync']}")
    assert result.stderr == ""


def test_diff_show_prints_the_differing_cids(tmp_path: Path) -> None:
    local = _write(tmp_path / "local.cids", A, B, C)
    remote = _write(tmp_path / "remote.cids", C, D, A)
    result = CliRunner().invoke(diff_command, [local, remote, "--show"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-2:] == [f"< {B}", f"> {D}"]


def test_diff_writes_the_differences_as_cid_files(tmp_path: Path) -> None:
    local = _write(tmp_path / "local.cids", A, B, C)
    remote = _write(tmp_path / "remote.cids", D)
    out_local, out_remote = tmp_path / "only-local.cids", tmp_path / "only-remote.cids"
    result = CliRunner().invoke(diff_command, [local, remote, "--only-local", str(out_local),
                                               "--only-remote", str(out_remote), "--tmp-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert out_local.read_text() == "".join(f"{c}\n" for c in sorted([A, B, C]))
    assert out_remote.read_text() == f"{D}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local.cids", "only-local.cids", "only-remote.cids",
                                                          "remote.cids"]  # its working directory is gone


def test_diff_json_and_duplicates(tmp_path: Path) -> None:
    local = _write(tmp_path / "local.cids", A, B)
    remote = _write(tmp_path / "remote.cids", A, B, B.upper())
    result = CliRunner().invoke(diff_command, [local, remote, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["onlyLocal"], doc["onlyRemote"], doc["common"]) == (0, 0, 2)
    assert doc["remote"]["duplicates"] == 1 and doc["remote"]["cids"] == 3
    assert doc["remote"]["vsync"] == A  # B twice cancels out
    assert "warning: REMOTE repeats 1 CID line(s)" in result.stderr


def test_diff_reads_one_side_from_stdin(tmp_path: Path) -> None:
    local = _write(tmp_path / "local.cids", A, B, C)
    result = CliRunner().invoke(diff_command, [local, "-", "--json"], input=f"{A}\n{D}\n")
    doc = json.loads(result.stdout)
    assert (doc["onlyLocal"], doc["onlyRemote"], doc["common"]) == (2, 1, 1)


def test_diff_bad_line_fails_naming_the_file_and_line(tmp_path: Path) -> None:
    local = _write(tmp_path / "local.cids", A, B)
    remote = _write(tmp_path / "remote.cids", A, "not a cid")
    result = CliRunner().invoke(diff_command, [local, remote])
    assert result.exit_code == 1
    assert f"{remote}: line 2: has a non-hex character b'n' at column 1" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("args", [["-", "-"], ["LOCAL", "REMOTE", "--show", "--json"]])
def test_diff_usage_errors(args: list[str], tmp_path: Path) -> None:
    paths = {"LOCAL": _write(tmp_path / "l.cids", A), "REMOTE": _write(tmp_path / "r.cids", B)}
    result = CliRunner().invoke(diff_command, [paths.get(a, a) for a in args], input="")
    assert result.exit_code == 2


def test_diff_progress_bar_goes_to_stderr_only(tmp_path: Path) -> None:
    local = _write(tmp_path / "local.cids", A, B, C)
    remote = _write(tmp_path / "remote.cids", C)
    result = CliRunner().invoke(diff_command, [local, remote, "--progress"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("only in LOCAL:  2\n")
