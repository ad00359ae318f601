"""Exact, streaming, memory-bounded set difference of two CID collections (DESIGN 2.6, 2.7 full path).

The DICT's CID file (BCB DICT API, "Arquivo de CIDs": one CID per line, 64 hex chars of any case
+ ``\\n``, no order) holds tens of millions of CIDs, so neither side is held as Python objects. Each
side is radix-partitioned to disk by the CID's first byte (32 raw bytes a CID); then, bucket by
bucket, both sides are loaded as fixed-width records, sorted together and the runs of equal CIDs
classified. A bucket over ``max_bucket_bytes`` is split again by the next byte, so peak memory
depends on chunk and bucket sizes, not on the number of CIDs. Each side's VSync (XOR) comes out of
the same pass, to check the inputs against the served VSync and the DICT's answer. Use::

    with CidSetDiff(workdir) as diff:
        diff.remote.add_cid_file(path)           # validates every line
        diff.local.extend_hex(local_cid_iter)    # 64-hex strings from the entries table
        summary = diff.finish()                  # CPU and disk bound: run it in a thread
        for cid in diff.only_remote(): ...       # 64 lower-case hex chars each
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from vsync_stream.errors import InvalidEntry

CID_BYTES = 32  # raw bytes in one CID (an HMAC-SHA-256)
LINE_BYTES = 65  # one CID file line: 64 hex chars + "\n"
DEFAULT_CHUNK_LINES = 1 << 18  # CID file lines validated per step (17 MB of text)
DEFAULT_FLUSH_CIDS = 1 << 19  # CIDs buffered per side before a run is written (16 MB)
DEFAULT_MAX_BUCKET_BYTES = 64 << 20  # largest bucket (both sides) diffed in memory; ~3x that is the peak
_MAX_SPLIT_DEPTH = 4  # split buckets by at most the first 4 bytes; deeper only helps floods of one CID
_HEX_DIGITS = b"0123456789abcdefABCDEF"

Records = npt.NDArray[np.uint8]  # (n, 32) C-contiguous raw CIDs
Source = str | os.PathLike[str] | BinaryIO  # a path, or a binary file object (sys.stdin.buffer for "-")
ProgressCallback = Callable[[str, int], None]
"""``progress(phase, cids)`` with the CIDs just processed; phase ``"local"`` / ``"remote"`` (taken in
by that side), ``"diff"`` (compared) or ``"read"`` (:func:`cid_file_vsync`)."""


def _line_problem(line: bytes) -> str | None:
    """Say what is wrong with one CID file line (without its ``\\n``), or None when it is a CID."""
    if line.endswith(b"\r"):
        return r"ends with CR LF (a Windows line ending); CID file lines end with \n only"
    if not line:
        return "is empty; every line holds one CID"
    if line.translate(None, _HEX_DIGITS):
        col = next(i for i, byte in enumerate(line) if byte not in _HEX_DIGITS)
        return f"has a non-hex character {line[col:col + 1]!r} at column {col + 1}"
    if len(line) != 64:
        return f"has {len(line)} characters; a CID is 64 hex characters"
    return None


def _diagnose(data: bytes, first_line: int, at_eof: bool) -> InvalidEntry:
    """Find the first bad line in ``data`` (starting at a line boundary) once the fast path failed."""
    pos, line_no = 0, first_line
    while (end := data.find(b"\n", pos)) >= 0:
        if (problem := _line_problem(data[pos:end])) is not None:
            return InvalidEntry(f"line {line_no}: {problem}")
        pos, line_no = end + 1, line_no + 1
    rest = data[pos:]
    if len(rest) > 64:  # the line goes on past the data at hand
        problem = _line_problem(rest[:65]) if rest[64:65] == b"\r" else "is longer than 64 characters"
    else:
        problem = _line_problem(rest) if rest else "is missing"
        if at_eof and problem is None:
            problem = r"has no final newline; every line of a CID file ends with \n, the last one too"
    return InvalidEntry(f"line {line_no}: {problem}")


class CidFileParser:
    """Incremental validating parser of a CID file, for one that arrives in pieces (a download).

    Each line must be exactly 64 hex chars (either case) + ``\\n`` (BCB DICT API, "Arquivo de
    CIDs"); anything else raises :class:`InvalidEntry` naming the 1-based line number and the
    problem (``line 7: has 63 characters; ...``).

    Args:
        sink: receives ``(n, 32)`` uint8 arrays of validated CIDs, in file order.
        chunk_lines: lines validated per step; memory is about 3 x 65 bytes per line of a step.
    """

    def __init__(self, sink: Callable[[Records], None], *, chunk_lines: int = DEFAULT_CHUNK_LINES) -> None:
        self._sink = sink
        self._chunk_bytes = max(1, chunk_lines) * LINE_BYTES
        self._pending = bytearray()
        self.lines = 0
        """Lines validated and handed to the sink so far."""

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take the next piece of the file; raises :class:`InvalidEntry` on a bad complete line."""
        if self._pending or len(data) < self._chunk_bytes:
            self._pending += data
            if len(self._pending) < self._chunk_bytes:
                return
            data, self._pending = bytes(self._pending), bytearray()
        self._parse(data, at_eof=False)

    def close(self) -> int:
        """Declare the end of the file; return its number of CIDs (lines).

        Raises:
            InvalidEntry: a bad line, including a last line without ``\\n``.
        """
        data, self._pending = bytes(self._pending), bytearray()
        self._parse(data, at_eof=True)
        return self.lines

    def _parse(self, data: bytes | bytearray | memoryview, at_eof: bool) -> None:
        view = memoryview(data)
        whole = len(view) // LINE_BYTES * LINE_BYTES
        for start in range(0, whole, self._chunk_bytes):
            block = view[start:min(start + self._chunk_bytes, whole)]
            rows = len(block) // LINE_BYTES
            # bytes.fromhex runs in C and takes both cases; it also skips whitespace, so the length
            # check plus a newline at every 65th byte proves each line is 64 hex + "\n".
            try:
                raw = bytes.fromhex(str(block, "ascii"))
            except (UnicodeDecodeError, ValueError):
                raw = b""
            if len(raw) != rows * CID_BYTES or not (np.frombuffer(block, np.uint8)[64::LINE_BYTES] == 10).all():
                raise _diagnose(bytes(view[start:]), self.lines + 1, at_eof)
            self._sink(np.frombuffer(raw, np.uint8).reshape(rows, CID_BYTES))
            self.lines += rows
        self._pending = bytearray(view[whole:])
        if at_eof and self._pending:
            raise _diagnose(bytes(self._pending), self.lines + 1, at_eof=True)


def read_cid_file(source: Source, sink: Callable[[Records], None], *, chunk_lines: int = DEFAULT_CHUNK_LINES) -> int:
    """Stream a CID file into ``sink`` as validated ``(n, 32)`` uint8 records; return its line count.

    Raises:
        InvalidEntry: a malformed line (message ``line N: what is wrong``).
        OSError: the file cannot be read.
    """
    parser = CidFileParser(sink, chunk_lines=chunk_lines)
    with open(source, "rb") if isinstance(source, str | os.PathLike) else nullcontext(source) as fh:
        while data := fh.read(chunk_lines * LINE_BYTES):
            parser.feed(data)
    return parser.close()


def _xor_of(records: Records) -> npt.NDArray[np.uint64]:
    """XOR of ``(n, 32)`` records as 4 uint64 words in memory order (``.tobytes().hex()`` is the VSync).

    Folds halves together (vectorised; ~8x faster than ``bitwise_xor.reduce`` over axis 0).
    """
    words = np.ascontiguousarray(records).view(np.uint64).reshape(-1)
    acc = np.zeros(4, np.uint64)
    while len(words) > 4:
        if len(words) % 8:  # an odd number of CIDs: set the last one aside
            acc ^= words[-4:]
            words = words[:-4]
        half = len(words) // 2
        words = words[:half] ^ words[half:]
    if len(words):
        acc ^= words
    return acc


def cid_file_vsync(source: Source, *, progress: ProgressCallback | None = None) -> tuple[str, int]:
    """Compute the VSync of a CID file (BCB DICT API, "Cálculo de VSync"), streaming, validating.

    Returns ``(vsync, count)``: 64 lower-case hex chars (64 zeros for an empty file), line count.

    Raises:
        InvalidEntry: a malformed line.
    """
    acc = np.zeros(4, np.uint64)

    def sink(records: Records) -> None:
        acc[:] ^= _xor_of(records)
        if progress is not None:
            progress("read", len(records))

    count = read_cid_file(source, sink)
    return acc.tobytes().hex(), count


class _Spill:
    """Records of one side on disk, partitioned by their byte at ``depth``: one file of runs.

    Each :meth:`add` writes a run sorted by that byte (stable radix sort) and keeps where each
    bucket starts in it: one file per side, not 256 (creating files is slow on some hosts).
    """

    def __init__(self, path: Path, depth: int) -> None:
        self.path, self.depth = path, depth
        self._fh: BinaryIO = open(path, "w+b")  # noqa: SIM115 -- closed by close()
        self._runs: list[tuple[int, npt.NDArray[np.int64]]] = []  # (file offset, 257 record bounds)
        self._end = 0
        self.sizes = np.zeros(256, np.int64)  # records per bucket

    def add(self, records: Records) -> None:
        keys = np.ascontiguousarray(records[:, self.depth])
        counts = np.bincount(keys, minlength=256)
        ordered = np.take(records, np.argsort(keys, kind="stable"), axis=0)
        self._fh.seek(self._end)
        self._fh.write(ordered.data)
        self._runs.append((self._end, np.concatenate(([0], np.cumsum(counts)))))
        self._end += ordered.nbytes
        self.sizes += counts

    def segments(self, byte: int) -> Iterator[Records]:
        """The records of bucket ``byte``, one array per run."""
        for offset, bounds in self._runs:
            if bounds[byte + 1] > bounds[byte]:
                out = np.empty((bounds[byte + 1] - bounds[byte], CID_BYTES), np.uint8)
                self._fh.seek(offset + int(bounds[byte]) * CID_BYTES)
                if self._fh.readinto(out.data) != out.nbytes:  # type: ignore[attr-defined]
                    raise OSError(f"{self.path} is shorter than written; did something else change it?")
                yield out

    def load(self, byte: int) -> Records:
        return np.concatenate([np.empty((0, CID_BYTES), np.uint8), *self.segments(byte)])

    def close(self) -> None:
        """Close and delete the file."""
        self._fh.close()
        self.path.unlink(missing_ok=True)


class CidSetWriter:
    """One side of a :class:`CidSetDiff` (``.local`` / ``.remote``): takes CIDs in chunks, in any mix
    of the ``add_*`` methods; at most ``flush_cids`` CIDs are held in memory, the rest goes to disk.
    """

    def __init__(self, side: str, directory: Path, *, flush_cids: int, progress: ProgressCallback | None) -> None:
        self.side = side
        self._flush_cids = flush_cids
        self._progress = progress
        self._buffer: list[Records] = []
        self._buffered = 0
        self._spill = _Spill(directory / f"{side}-0.spill", depth=0)
        self._xor = np.zeros(4, np.uint64)
        self._closed = False
        self.count = 0
        """CIDs taken in so far, duplicates included."""

    @property
    def vsync(self) -> str:
        """XOR of every CID taken in, 64 lower-case hex chars (a duplicated pair cancels out)."""
        return self._xor.tobytes().hex()

    def add_records(self, records: Records) -> None:
        """Add raw CIDs as an ``(n, 32)`` uint8 array (copied: the caller may reuse it)."""
        if records.ndim != 2 or records.shape[1] != CID_BYTES or records.dtype != np.uint8:
            raise ValueError(f"records must be an (n, 32) uint8 array, got {records.shape} {records.dtype}")
        self._add(np.array(records, copy=True))

    def add_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Add raw CIDs concatenated, 32 bytes each (``len(data)`` a multiple of 32)."""
        if len(data) % CID_BYTES:
            raise ValueError(f"raw CIDs are 32 bytes each; got {len(data)} bytes")
        self._add(np.frombuffer(bytes(data), np.uint8).reshape(-1, CID_BYTES))

    def add_hex(self, cids: Sequence[str]) -> None:
        """Add CIDs as hex strings, 64 hex chars each, any case.

        Raises:
            InvalidEntry: a string is not a CID (the message gives its 1-based position on this side).
        """
        if not cids:
            return
        try:
            raw = bytes.fromhex("".join(cids))
        except ValueError:
            raw = b""
        # fromhex skips whitespace, so "every string 64 long and 32 bytes out each" proves all hex.
        if len(raw) != CID_BYTES * len(cids) or set(map(len, cids)) != {64}:
            bad = next(i for i, text in enumerate(cids) if len(text) != 64 or not text.isascii()
                       or text.encode().translate(None, _HEX_DIGITS))
            raise InvalidEntry(f"{self.side} CID #{self.count + bad + 1} is not 64 hex characters")
        self._add(np.frombuffer(raw, np.uint8).reshape(-1, CID_BYTES))

    def extend_hex(self, cids: Iterable[str], *, batch: int = 65536) -> None:
        """Add hex CIDs from any iterable (an entries-table scan), ``batch`` at a time."""
        it = iter(cids)
        while chunk := list(islice(it, batch)):
            self.add_hex(chunk)

    def add_cid_file(self, source: Source) -> int:
        """Add every CID of a CID file, validating each line; returns the number of lines."""
        return read_cid_file(source, self._add)

    def cid_file_parser(self) -> CidFileParser:
        """A parser feeding this side, for a CID file that arrives in pieces (call its ``close()``)."""
        return CidFileParser(self._add)

    def _add(self, records: Records) -> None:
        """Add records nobody will modify (fresh arrays, or views of immutable ``bytes``)."""
        if self._closed:
            raise RuntimeError(f"the {self.side} side is finished; no more CIDs can be added")
        if not len(records):
            return
        self._xor ^= _xor_of(records)
        self._buffer.append(records)
        self._buffered += len(records)
        self.count += len(records)
        if self._progress is not None:
            self._progress(self.side, len(records))
        if self._buffered >= self._flush_cids:
            self._flush()

    def _flush(self, last: bool = False) -> _Spill:
        if self._buffer:
            self._spill.add(np.concatenate(self._buffer))
            self._buffer, self._buffered = [], 0
        self._closed = self._closed or last
        return self._spill


@dataclass(frozen=True, slots=True)
class CidDiffSummary:
    """The outcome of a :class:`CidSetDiff`.

    Attributes:
        only_local: distinct CIDs only on the local side (remove them locally).
        only_remote: distinct CIDs only on the remote side, the DICT's (fetch the entries by CID).
        common: distinct CIDs on both sides.
        local_count: CIDs fed to the local side, duplicates included.
        remote_count: CIDs fed to the remote side, duplicates included.
        local_duplicates: extra copies of local CIDs fed more than once (one per extra copy).
        remote_duplicates: the same for the remote side (a CID file never legitimately has any).
        local_vsync: XOR of all local CIDs fed, 64 lower-case hex (must equal the served VSync).
        remote_vsync: XOR of all remote CIDs fed (must be the VSync the DICT holds).
    """

    only_local: int
    only_remote: int
    common: int
    local_count: int
    remote_count: int
    local_duplicates: int
    remote_duplicates: int
    local_vsync: str
    remote_vsync: str

    @property
    def identical(self) -> bool:
        """True when both sides hold the same set of CIDs."""
        return self.only_local == 0 and self.only_remote == 0


def _neighbour_differs(ordered: Records) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """For each adjacent pair: do the first 8 bytes differ; do the other 24 differ."""
    words = ordered.view(np.uint64)
    head = words[1:, 0] != words[:-1, 0]
    return head, (words[1:, 1] != words[:-1, 1]) | (words[1:, 2] != words[:-1, 2]) | (words[1:, 3] != words[:-1, 3])


def _sorted_runs(records: Records) -> tuple[npt.NDArray[np.intp], Records, npt.NDArray[np.intp]]:
    """Sort records by their 32 bytes; return ``(order, sorted records, first index of each run)``.

    CIDs are uniform hashes, so sorting by the first 8 bytes almost always orders them fully; the
    4-word sort runs only when two different CIDs share those 8 bytes (odds about n^2 / 2^65).
    """
    words = records.view(">u8")  # (n, 4), big-endian so integer order is byte order
    order = np.argsort(words[:, 0].astype(np.uint64))
    ordered = np.take(records, order, axis=0)
    head, tail = _neighbour_differs(ordered)
    if bool((tail & ~head).any()):
        order = np.lexsort([words[:, i].astype(np.uint64) for i in (3, 2, 1, 0)])
        ordered = np.take(records, order, axis=0)
        head, tail = _neighbour_differs(ordered)
    return order, ordered, np.flatnonzero(np.concatenate(([True], head | tail)))


def _diff_bucket(local: Records, remote: Records) -> tuple[Records, Records, npt.NDArray[np.int64]]:
    """Classify the distinct CIDs of one bucket.

    Returns:
        ``(only_local, only_remote, tallies)``: sorted ``(m, 32)`` records, and
        ``(common, local_duplicates, remote_duplicates)``.
    """
    records = np.concatenate([local, remote])
    order, ordered, starts = _sorted_runs(records)
    lengths = np.diff(np.append(starts, len(records)))
    in_remote = np.add.reduceat((order >= len(local)).astype(np.int64), starts)
    in_local = lengths - in_remote
    tallies = np.array([np.count_nonzero((in_local > 0) & (in_remote > 0)),
                        np.maximum(in_local - 1, 0).sum(), np.maximum(in_remote - 1, 0).sum()], np.int64)
    return np.take(ordered, starts[in_remote == 0], axis=0), np.take(ordered, starts[in_local == 0], axis=0), tallies


class CidSetDiff:
    """Exact set difference between a LOCAL and a REMOTE collection of CIDs, on disk.

    A context manager owning a working directory (removed on exit or garbage collection). Feed
    :attr:`local` and :attr:`remote`, call :meth:`finish`, then iterate :meth:`only_local` /
    :meth:`only_remote` before exit. Disk: 32 bytes per CID fed and per differing CID. Memory:
    ``flush_cids`` x 64 bytes per side, and at most ~3 x ``max_bucket_bytes`` in :meth:`finish`.

    Args:
        tmp_dir: parent of the working directory (default: the system temp dir).
        progress: see :data:`ProgressCallback`.
        flush_cids: CIDs buffered per side before a run is written to disk.
        max_bucket_bytes: a bucket larger than this (both sides) is split by the next byte first.
    """

    def __init__(self, tmp_dir: str | os.PathLike[str] | None = None, *, progress: ProgressCallback | None = None,
                 flush_cids: int = DEFAULT_FLUSH_CIDS, max_bucket_bytes: int = DEFAULT_MAX_BUCKET_BYTES) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="vsync-cidset-", dir=tmp_dir))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._dir, True)
        self._progress = progress
        self._max_bucket_bytes = max_bucket_bytes
        self.local = CidSetWriter("local", self._dir, flush_cids=max(1, flush_cids), progress=progress)
        self.remote = CidSetWriter("remote", self._dir, flush_cids=max(1, flush_cids), progress=progress)
        self.summary: CidDiffSummary | None = None  # set by finish()

    def __enter__(self) -> CidSetDiff:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the spill files and remove the working directory with everything in it."""
        self.local._spill.close()
        self.remote._spill.close()
        self._cleanup()

    def finish(self) -> CidDiffSummary:
        """Diff everything fed so far, bucket by bucket (CPU and disk bound: seconds per 10 M CIDs).

        Returns the counts and both VSyncs (the same summary if called again); the differing CIDs
        are then in :meth:`only_local` / :meth:`only_remote`. The writers take no more CIDs.
        """
        if self.summary is not None:
            return self.summary
        tallies = np.zeros(5, np.int64)  # only local, only remote, common, local dups, remote dups
        with open(self._out_path("local"), "wb") as out_local, open(self._out_path("remote"), "wb") as out_remote:
            for only_l, only_r, counts in self._diff_spills(self.local._flush(True), self.remote._flush(True)):
                out_local.write(only_l.data)
                out_remote.write(only_r.data)
                tallies += (len(only_l), len(only_r), *counts)
        only_local, only_remote, common, local_dups, remote_dups = map(int, tallies)
        self.summary = CidDiffSummary(
            only_local=only_local, only_remote=only_remote, common=common,
            local_count=self.local.count, remote_count=self.remote.count,
            local_duplicates=local_dups, remote_duplicates=remote_dups,
            local_vsync=self.local.vsync, remote_vsync=self.remote.vsync,
        )
        return self.summary

    def _diff_spills(self, local: _Spill, remote: _Spill) -> Iterator[tuple[Records, Records, npt.NDArray[np.int64]]]:
        """Diff bucket by bucket in byte order, splitting a bucket by the next byte when it is too large."""
        for byte in np.flatnonzero(local.sizes + remote.sizes).tolist():
            size = int(local.sizes[byte] + remote.sizes[byte]) * CID_BYTES
            if size > self._max_bucket_bytes and local.depth + 1 < _MAX_SPLIT_DEPTH:
                depth = local.depth + 1
                parts = [_Spill(self._dir / f"{side}-{depth}.spill", depth) for side in ("local", "remote")]
                try:
                    for parent, part in zip((local, remote), parts, strict=True):
                        for segment in parent.segments(byte):
                            part.add(segment)
                    yield from self._diff_spills(*parts)
                finally:
                    for part in parts:
                        part.close()
                continue
            left, right = local.load(byte), remote.load(byte)
            yield _diff_bucket(left, right)
            if self._progress is not None:
                self._progress("diff", len(left) + len(right))

    def _out_path(self, side: str) -> Path:
        return self._dir / f"only-{side}.cids"

    def _iter_out(self, side: str, batch: int) -> Iterator[str]:
        if self.summary is None:
            raise RuntimeError("call finish() before reading the differences")
        with open(self._out_path(side), "rb") as fh:
            while data := fh.read(batch * CID_BYTES):
                text = data.hex()
                yield from (text[i:i + 64] for i in range(0, len(text), 64))

    def only_local(self, *, batch: int = 65536) -> Iterator[str]:
        """CIDs only on the local side, sorted, 64 lower-case hex chars each (remove them locally)."""
        return self._iter_out("local", batch)

    def only_remote(self, *, batch: int = 65536) -> Iterator[str]:
        """CIDs only on the remote side, sorted, 64 lower-case hex chars each (fetch them by CID)."""
        return self._iter_out("remote", batch)
