"""The streaming CID set difference (domain/cidset.py) against a Python-set reference."""

from __future__ import annotations

import io
import random
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from tests.factories import official_vectors
from vsync_stream.domain.cidset import (
    CidFileParser,
    CidSetDiff,
    _xor_of,
    cid_file_vsync,
    read_cid_file,
)
from vsync_stream.domain.vsync import EMPTY_VSYNC, xor_cids
from vsync_stream.errors import InvalidEntry

VECTORS = official_vectors()


def _cids(rng: random.Random, n: int, prefix: bytes = b"") -> list[str]:
    return [(prefix + rng.randbytes(32 - len(prefix))).hex() for _ in range(n)]


def _cid_file(cids: list[str]) -> bytes:
    return "".join(f"{c}\n" for c in cids).encode()


def _diff(local: list[str], remote: list[str], tmp_path: Path, **kwargs: int) -> CidSetDiff:
    """A finished diff with LOCAL fed as hex strings and REMOTE as a CID file."""
    diff = CidSetDiff(tmp_path, **kwargs)
    diff.local.extend_hex(local, batch=7)
    diff.remote.add_cid_file(io.BytesIO(_cid_file(remote)))
    diff.finish()
    return diff


def _check(local: list[str], remote: list[str], tmp_path: Path, **kwargs: int) -> None:
    with _diff(local, remote, tmp_path, **kwargs) as diff:
        lset, rset = {c.lower() for c in local}, {c.lower() for c in remote}
        summary = diff.finish()
        assert list(diff.only_local()) == sorted(lset - rset)
        assert list(diff.only_remote()) == sorted(rset - lset)
        assert (summary.only_local, summary.only_remote, summary.common) == (
            len(lset - rset), len(rset - lset), len(lset & rset))
        assert (summary.local_count, summary.remote_count) == (len(local), len(remote))
        assert summary.local_duplicates == len(local) - len(lset)
        assert summary.remote_duplicates == len(remote) - len(rset)
        assert summary.local_vsync == xor_cids(local) and summary.remote_vsync == xor_cids(remote)
        assert summary.identical == (lset == rset)


# small flushes and buckets exercise many runs per bucket and the split by the next byte
SIZES = [{}, {"flush_cids": 5}, {"flush_cids": 3, "max_bucket_bytes": 64}]


@pytest.mark.parametrize("kwargs", SIZES)
@pytest.mark.parametrize("seed", range(5))
def test_random_sets_match_the_python_set_reference(seed: int, kwargs: dict[str, int], tmp_path: Path) -> None:
    rng = random.Random(seed)
    common = _cids(rng, rng.randint(0, 400))
    local = common + _cids(rng, rng.randint(0, 60))
    remote = common + _cids(rng, rng.randint(0, 60))
    rng.shuffle(local)
    rng.shuffle(remote)
    _check(local, remote, tmp_path, **kwargs)


@pytest.mark.parametrize("kwargs", SIZES)
@pytest.mark.parametrize("case", ["both empty", "local empty", "remote empty", "identical", "all differ", "one each"])
def test_edge_cases(case: str, kwargs: dict[str, int], tmp_path: Path) -> None:
    rng = random.Random(case)
    some, other = _cids(rng, 300), _cids(rng, 200)
    local, remote = {
        "both empty": ([], []), "local empty": ([], some), "remote empty": (some, []),
        "identical": (some, list(reversed(some))), "all differ": (some, other), "one each": (some[:1], other[:1]),
    }[case]
    _check(local, remote, tmp_path, **kwargs)


def test_upper_case_is_the_same_cid(tmp_path: Path) -> None:
    rng = random.Random(1)
    cids = _cids(rng, 50)
    _check(cids, [c.upper() for c in cids[:40]] + _cids(rng, 3), tmp_path)
    _check([c.upper() for c in cids], cids, tmp_path)


@pytest.mark.parametrize("kwargs", SIZES)
def test_duplicates_are_counted_not_merged_silently(kwargs: dict[str, int], tmp_path: Path) -> None:
    rng = random.Random(2)
    cids = _cids(rng, 100)
    local = cids + cids[:3] + cids[:1]  # cids[0] three times, cids[1..2] twice
    remote = cids[50:] + cids[60:62] + _cids(rng, 5)
    _check(local, remote, tmp_path, **kwargs)
    with _diff(local, remote, tmp_path, **kwargs) as diff:
        assert (diff.finish().local_duplicates, diff.finish().remote_duplicates) == (4, 2)


def test_cids_sharing_their_first_8_bytes_are_still_told_apart(tmp_path: Path) -> None:
    # the fast path sorts by the first 8 bytes only; equal heads with different tails need the full sort
    rng = random.Random(3)
    head = rng.randbytes(8)
    x, y, z = (head + rng.randbytes(24)).hex(), (head + rng.randbytes(24)).hex(), (head + rng.randbytes(24)).hex()
    _check([x, y, x], [y, z, x, z], tmp_path)
    _check([x, y], [z], tmp_path)
    _check(_cids(rng, 40, head) + [x], _cids(rng, 40, head) + [x, y], tmp_path, flush_cids=3)


def test_a_flood_of_one_prefix_is_split_by_later_bytes(tmp_path: Path) -> None:
    rng = random.Random(4)
    local = _cids(rng, 300, b"\x00\x00\x00") + _cids(rng, 50, b"\x00\x00\x00\x00\x00")
    remote = local[:200] + _cids(rng, 100, b"\x00\x00\x00")
    _check(local, remote, tmp_path, flush_cids=16, max_bucket_bytes=256)
    _check(local * 2, local, tmp_path, max_bucket_bytes=64)  # one CID per bucket even at full depth


def test_all_feeding_apis_agree(tmp_path: Path) -> None:
    rng = random.Random(5)
    cids = _cids(rng, 100)
    raw = b"".join(bytes.fromhex(c) for c in cids)
    with CidSetDiff(tmp_path) as diff:
        diff.local.add_bytes(raw[:32 * 30])
        records = np.frombuffer(raw[32 * 30:32 * 60], np.uint8).reshape(-1, 32).copy()
        diff.local.add_records(records)
        records[:] = 0  # the writer copied them
        diff.local.add_hex([c.upper() for c in cids[60:80]])
        parser = diff.local.cid_file_parser()
        text = _cid_file(cids[80:])
        for i in range(0, len(text), 11):
            parser.feed(text[i:i + 11])
        assert parser.close() == 20
        diff.remote.extend_hex(iter(cids))
        summary = diff.finish()
    assert summary.identical and summary.common == 100 and summary.local_vsync == xor_cids(cids)


def test_parser_takes_any_chunking(tmp_path: Path) -> None:
    rng = random.Random(6)
    cids = _cids(rng, 500)
    text = _cid_file(cids)
    for chunk_lines in (1, 3, 64, 1000):
        out: list[np.ndarray] = []
        parser = CidFileParser(out.append, chunk_lines=chunk_lines)
        pos = 0
        while pos < len(text):
            step = rng.choice([1, 7, 64, 65, 66, 200, 5000])
            parser.feed(memoryview(text)[pos:pos + step])
            pos += step
        assert parser.close() == 500
        assert np.concatenate(out).tobytes().hex() == "".join(cids)


GOOD = "28c06eb41c4dc9c3ae114831efcac7446c8747777fca8b145ecd31ff8480ae88"
BAD_LINES = {
    "short line": (GOOD[:63] + "\n", "line 3: has 63 characters"),
    # with little lookahead (a small chunk) a long line may only be known as "longer than 64"
    "long line": (GOOD + "a\n", "line 3: (has 65 characters|is longer than 64 characters)"),
    "non-hex": (GOOD[:10] + "g" + GOOD[11:] + "\n", "line 3: has a non-hex character b'g' at column 11"),
    "space": (" " + GOOD[1:] + "\n", "line 3: has a non-hex character b' ' at column 1"),
    "non-ascii": ("é" + GOOD[2:] + "\n", "line 3: has a non-hex character b'\\xc3' at column 1"),
    "empty line": ("\n", "line 3: is empty"),
    "crlf": (GOOD + "\r\n", "line 3: ends with CR LF"),
    "missing final newline": (GOOD, "line 3: has no final newline"),
    "short last line": (GOOD[:5], "line 3: has 5 characters"),
    "0x prefix": ("0x" + GOOD[2:] + "\n", "line 3: has a non-hex character b'x' at column 2"),
}


@pytest.mark.parametrize("chunk_lines", [1, 2, 1000])
@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_line_names_its_line_number_and_problem(case: str, chunk_lines: int) -> None:
    bad, message = BAD_LINES[case]
    tail = "" if case in ("missing final newline", "short last line") else GOOD + "\n" + GOOD.upper() + "\n"
    data = (GOOD + "\n" + GOOD.upper() + "\n" + bad + tail).encode()
    with pytest.raises(InvalidEntry, match="^" + message if case == "long line" else "^" + re.escape(message)):
        read_cid_file(io.BytesIO(data), lambda records: None, chunk_lines=chunk_lines)


def test_bad_line_far_into_a_file_and_split_across_feeds() -> None:
    lines = [GOOD + "\n"] * 1000
    lines[876] = GOOD[:-1] + "\n"
    data = "".join(lines).encode()
    parser = CidFileParser(lambda records: None, chunk_lines=100)
    with pytest.raises(InvalidEntry, match="^line 877: has 63 characters"):
        for i in range(0, len(data), 999):
            parser.feed(data[i:i + 999])
        parser.close()


@pytest.mark.parametrize("bad", [GOOD[:63], GOOD + "0", " " + GOOD[1:], "0x" + GOOD[2:], GOOD[:63] + "g", "é" * 64])
def test_add_hex_rejects_what_is_not_a_cid(bad: str, tmp_path: Path) -> None:
    with CidSetDiff(tmp_path) as diff:
        diff.local.add_hex([GOOD])
        with pytest.raises(InvalidEntry, match=r"^local CID #3 is not 64 hex characters"):
            diff.local.add_hex([GOOD.upper(), bad, GOOD])


def test_misuse_is_refused(tmp_path: Path) -> None:
    with CidSetDiff(tmp_path) as diff:
        with pytest.raises(ValueError, match="32 bytes each"):
            diff.local.add_bytes(b"x" * 33)
        with pytest.raises(ValueError, match=r"\(n, 32\) uint8"):
            diff.local.add_records(np.zeros((2, 31), np.uint8))
        with pytest.raises(RuntimeError, match="finish"):
            next(diff.only_local())
        diff.finish()
        with pytest.raises(RuntimeError, match="finished"):
            diff.remote.add_hex([GOOD])


def test_working_directory_is_removed_on_exit_and_on_error(tmp_path: Path) -> None:
    with CidSetDiff(tmp_path) as diff:
        diff.local.add_hex(_cids(random.Random(7), 10))
        diff.finish()
        assert any(tmp_path.iterdir())
    assert not any(tmp_path.iterdir())
    with pytest.raises(InvalidEntry), CidSetDiff(tmp_path) as diff:
        diff.remote.add_cid_file(io.BytesIO(b"nope\n"))
    assert not any(tmp_path.iterdir())


def test_progress_reports_every_cid_of_each_phase(tmp_path: Path) -> None:
    seen: dict[str, int] = {}
    rng = random.Random(8)
    with CidSetDiff(tmp_path, progress=lambda phase, n: seen.__setitem__(phase, seen.get(phase, 0) + n),
                    flush_cids=10) as diff:
        diff.local.extend_hex(_cids(rng, 123), batch=10)
        diff.remote.add_cid_file(io.BytesIO(_cid_file(_cids(rng, 45))))
        diff.finish()
    assert seen == {"local": 123, "remote": 45, "diff": 168}


@pytest.mark.parametrize("case", VECTORS["vsync"])
def test_cid_file_vsync_of_the_official_vectors(case: dict) -> None:
    assert cid_file_vsync(io.BytesIO(_cid_file(case["cids"]))) == (case["vsync"], len(case["cids"]))
    assert cid_file_vsync(io.BytesIO(_cid_file([c.upper() for c in case["cids"]])))[0] == case["vsync"]


def test_cid_file_vsync_reads_a_path(tmp_path: Path) -> None:
    cids = _cids(random.Random(9), 1001)
    (tmp_path / "f.cids").write_bytes(_cid_file(cids))
    assert cid_file_vsync(tmp_path / "f.cids") == (xor_cids(cids), 1001)
    (tmp_path / "empty.cids").write_bytes(b"")
    assert cid_file_vsync(str(tmp_path / "empty.cids")) == (EMPTY_VSYNC, 0)


def test_xor_fold_matches_the_reference_for_every_small_count() -> None:
    rng = random.Random(10)
    for n in range(0, 40):
        cids = _cids(rng, n)
        records = np.frombuffer(bytes.fromhex("".join(cids)), np.uint8).reshape(-1, 32)
        assert _xor_of(records).tobytes().hex() == xor_cids(cids)


def test_memory_stays_bounded_by_chunk_and_bucket_sizes(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    n = 300_000
    raw = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    tracemalloc.start()
    try:
        with CidSetDiff(tmp_path, flush_cids=1 << 13, max_bucket_bytes=1 << 20) as diff:
            for start in range(0, n, 1 << 12):
                diff.local.add_records(raw[start:start + (1 << 12)])
                diff.remote.add_records(raw[::-1][start:start + (1 << 12)])
            summary = diff.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.common == n and summary.identical
    assert peak < 2 * n * 32 / 8, f"peak {peak} bytes for {2 * n * 32} bytes of CIDs"
