"""The bootstrap's scan: export rows validated, rejected ones recorded, good ones spooled by changelog partition.

The spool is a directory of bucket files ``<bucket>.<part>.bin``; bucket *b* holds rows of changelog
partition ``b // subs`` (:func:`bucket_layout`), and the load reads one bucket (all its parts) at a
time. A part is what one scanner wrote: the main process for a stream (gzip, CSV, stdin), or one of
``jobs`` processes for a byte range of a plain JSON Lines file (the scan is CPU-bound: JSON,
validation, HMAC). Rejects of the ranges are appended in range order with absolute line numbers, so
the rejects file is the same whatever ``jobs`` is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import multiprocessing
import os
import shutil
import signal
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import IO, Any

import orjson
from tqdm import tqdm

from vsync_stream.bridges.kafka_partitioner import partitions_of
from vsync_stream.domain.export import ExportRow, iter_export, iter_jsonl_lines
from vsync_stream.domain.vsync import VSyncLedger
from vsync_stream.errors import VsyncError

SCAN_CHUNK = 20_000  # rows partitioned and spooled together (one numpy murmur2 pass)
BUCKETS_TARGET = 128  # spool buckets in all (a bucket is read whole into memory during the load)
PARALLEL_MIN_BYTES = 32 * 1024 * 1024  # smaller files are scanned in one process
_RECORD = struct.Struct("<IHHH")  # line, file index, key length, value length
PR_SET_PDEATHSIG = 1  # prctl(2)


class ScanInputError(VsyncError):
    """An export file cannot be read."""


def bucket_layout(partitions: int) -> int:
    """Sub-buckets per changelog partition (buckets = partitions x this)."""
    return max(1, BUCKETS_TARGET // partitions)


class Rejects:
    """The rejects file: one JSON object per rejected row, ``{"file", "line", "code", "reason"}``."""

    def __init__(self, path: Path, keep_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "ab")  # noqa: SIM115 - closed by close()
        self._fh.truncate(keep_bytes)
        self._fh.seek(keep_bytes)
        self.count = 0

    def add(self, file: str, line: int, code: str, reason: str) -> None:
        """Record one rejected row (``reason`` carries no personal data)."""
        self._fh.write(reject_line(file, line, code, reason))
        self.count += 1

    def add_raw(self, data: bytes, count: int) -> None:
        """Append already formatted reject lines (a parallel scanner's)."""
        self._fh.write(data)
        self.count += count

    def flush(self) -> int:
        """Flush to disk; returns the file's size in bytes."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return self._fh.tell()

    def close(self) -> None:
        """Close the file."""
        self._fh.close()


def reject_line(file: str, line: int, code: str, reason: str) -> bytes:
    """One line of the rejects file."""
    return orjson.dumps({"file": file, "line": line, "code": code, "reason": reason}) + b"\n"


class _Spooler:
    """Writes one part of the spool: rows → bucket files, and their contributions to a ledger."""

    def __init__(self, spool: Path, part: int, partitions: int) -> None:
        self.partitions = partitions
        self.subs = bucket_layout(partitions)
        self.files = [open(spool / f"{b:05d}.{part:04d}.bin", "wb", buffering=256 * 1024)  # noqa: SIM115
                      for b in range(partitions * self.subs)]
        self.ledger = VSyncLedger()

    def write(self, chunk: list[tuple[int, ExportRow]], file_index: int) -> None:
        if not chunk:
            return
        keys = [row.key.encode("utf-8") for _line, row in chunk]
        placed = partitions_of(keys, self.partitions).tolist()
        pack, crc, add, files, subs = _RECORD.pack, zlib.crc32, self.ledger.add, self.files, self.subs
        for (line, row), key, partition in zip(chunk, keys, placed, strict=True):
            state = row.state
            add(state.participant, state.key_type, state.cid)  # type: ignore[arg-type]
            value = state.encode()
            files[partition * subs + crc(key) % subs].write(pack(line, file_index, len(key), len(value)) + key + value)

    def close(self) -> None:
        for fh in self.files:
            fh.close()


def _open_input(name: str) -> IO[bytes]:
    if name == "-":
        return sys.stdin.buffer
    try:
        return open(name, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise ScanInputError(f"cannot read the export {name}: {exc.strerror}") from None


def scan(exports: list[str], participants: frozenset[str], partitions: int, spool: Path, rejects: Rejects,
         ledger: VSyncLedger, progress: bool = True, jobs: int = 1) -> int:
    """Validate every row and spool the good ones by changelog partition; return the rows read.

    ``ledger`` gets every spooled row's contribution (the load takes out those of duplicated keys).
    A plain JSON Lines file of at least 32 MB is scanned by ``jobs`` processes, one byte range each.

    Raises:
        ExportFormatError: an input is not an export (nothing of the load is usable then).
        ScanInputError: an input cannot be read.
    """
    if spool.exists():
        shutil.rmtree(spool)
    spool.mkdir(parents=True)
    rows = 0
    parts = 0
    with tqdm(desc="scanning", unit="row", file=sys.stderr, disable=not progress, mininterval=1.0,
              unit_scale=True) as bar:
        for file_index, name in enumerate(exports):
            label = "<stdin>" if name == "-" else name
            ranges = _ranges(name, jobs)
            if ranges is not None:
                rows += _scan_parallel(name, label, file_index, ranges, participants, partitions, spool, parts,
                                       rejects, ledger, bar)
                parts += len(ranges)
                continue
            spooler = _Spooler(spool, parts, partitions)
            parts += 1
            stream = _open_input(name)
            try:
                rows += _scan_rows(iter_export(stream, participants), label, file_index, spooler,
                                   functools.partial(rejects.add, label), bar.update)
            finally:
                spooler.close()
                if stream is not sys.stdin.buffer:
                    stream.close()
            ledger.merge(spooler.ledger)
    return rows


def _scan_rows(parsed_lines: Iterator[Any], label: str, file_index: int, spooler: _Spooler,
               reject: Callable[[int, str, str], None], advance: Callable[[int], Any]) -> int:
    rows = 0
    chunk: list[tuple[int, ExportRow]] = []
    for parsed in parsed_lines:
        rows += 1
        if parsed.row is None:
            reject(parsed.line, parsed.error.code, parsed.error.reason)
        else:
            chunk.append((parsed.line, parsed.row))
            if len(chunk) >= SCAN_CHUNK:
                spooler.write(chunk, file_index)
                advance(len(chunk))
                chunk = []
    spooler.write(chunk, file_index)
    advance(len(chunk))
    return rows


def _ranges(name: str, jobs: int) -> list[tuple[int, int, int]] | None:
    """``(start, end, first line)`` byte ranges of a plain JSON Lines file, split at line ends; else None."""
    if jobs < 2 or name == "-":
        return None
    try:
        size = os.path.getsize(name)
        with open(name, "rb") as fh:
            head = fh.read(4096)
            if size < PARALLEL_MIN_BYTES or head[:2] == b"\x1f\x8b" or head.lstrip()[:1] != b"{":
                return None
            cuts = [0]
            for j in range(1, jobs):
                fh.seek(size * j // jobs)
                fh.readline()  # to the start of the next line
                cuts.append(max(fh.tell(), cuts[-1]))
            cuts.append(size)
            fh.seek(0)
            lines, firsts, at = 0, [], 0
            for start in cuts[:-1]:  # first line number of each range: the newlines before it
                while at < start:
                    block = fh.read(min(16 * 1024 * 1024, start - at))
                    lines += block.count(b"\n")
                    at += len(block)
                firsts.append(lines + 1)
    except OSError:
        return None
    return [(cuts[j], cuts[j + 1], firsts[j]) for j in range(jobs) if cuts[j + 1] > cuts[j]]


def _scan_parallel(name: str, label: str, file_index: int, ranges: list[tuple[int, int, int]],
                   participants: frozenset[str], partitions: int, spool: Path, first_part: int, rejects: Rejects,
                   ledger: VSyncLedger, bar: tqdm[Any]) -> int:
    context = multiprocessing.get_context("spawn")  # the parent holds network clients and threads
    counter = context.Value("q", 0)
    with ProcessPoolExecutor(len(ranges), mp_context=context, initializer=_init_worker,
                             initargs=(counter,)) as pool:
        futures = [pool.submit(_scan_range, name, label, file_index, start, end, first, start == 0, participants,
                               partitions, str(spool), first_part + j)
                   for j, (start, end, first) in enumerate(ranges)]
        while not all(f.done() for f in futures):
            bar.update(counter.value - bar.n)  # type: ignore[attr-defined]
            time.sleep(0.5)
        results = [f.result() for f in futures]  # raises what a scanner raised (ExportFormatError …)
    rows = 0
    for count, rejected, rejects_file, ledger_doc in results:
        rows += count
        rejects.add_raw(Path(rejects_file).read_bytes(), rejected)
        Path(rejects_file).unlink()
        ledger.merge(VSyncLedger.from_json(ledger_doc))
    bar.update(counter.value - bar.n)  # type: ignore[attr-defined]
    return rows


_COUNTER: Any = None


def _init_worker(counter: Any) -> None:
    global _COUNTER
    _COUNTER = counter
    # A scanner must not outlive a SIGKILLed load (it would go on writing a spool the rerun replaces).
    if sys.platform == "linux":
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before the line above
            os._exit(1)


def _scan_range(name: str, label: str, file_index: int, start: int, end: int, first_line: int, at_start: bool,
                participants: frozenset[str], partitions: int, spool: str, part: int
                ) -> tuple[int, int, str, dict[str, Any]]:
    """One parallel scanner: the JSON Lines of ``[start, end)`` of a file (runs in a child process)."""
    rejects_path = Path(spool) / f"rejects.{part:04d}.jsonl"
    spooler = _Spooler(Path(spool), part, partitions)
    rejected = 0

    def reject(line: int, code: str, reason: str) -> None:
        nonlocal rejected
        out.write(reject_line(label, line, code, reason))
        rejected += 1

    def advance(n: int) -> None:
        with _COUNTER.get_lock():
            _COUNTER.value += n

    with open(name, "rb", buffering=1 << 20) as fh, open(rejects_path, "wb") as out:
        fh.seek(start)
        try:
            rows = _scan_rows(iter_jsonl_lines(_bounded_lines(fh, end - start), participants, first_line, at_start),
                              label, file_index, spooler, reject, advance)
        finally:
            spooler.close()
    return rows, rejected, str(rejects_path), spooler.ledger.to_json()


def _bounded_lines(fh: IO[bytes], length: int) -> Iterator[bytes]:
    left = length
    for line in fh:
        yield line
        left -= len(line)
        if left <= 0:
            return


def read_bucket(spool: Path, bucket: int) -> list[tuple[int, int, bytes, bytes]]:
    """The spooled rows of one bucket, every part in part order: ``(line, file index, Pix key, encoded state)``."""
    out: list[tuple[int, int, bytes, bytes]] = []
    size, unpack = _RECORD.size, _RECORD.unpack_from
    for path in sorted(spool.glob(f"{bucket:05d}.*.bin")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            line, file_index, klen, vlen = unpack(data, at)
            at += size
            key = data[at:at + klen]
            at += klen
            out.append((line, file_index, key, data[at:at + vlen]))
            at += vlen
    return out


def split_duplicates(records: Sequence[tuple[int, int, bytes, bytes]]
                     ) -> tuple[dict[bytes, bytes], dict[bytes, list[tuple[int, int]]]]:
    """Separate the keys found once from those found on several rows (every one of those is rejected).

    Returns:
        ``(unique, duplicated)``: key → encoded state for the keys on one row; key → sorted
        ``(file index, line)`` of every row of the keys on several rows.
    """
    unique: dict[bytes, bytes] = {}
    where: dict[bytes, tuple[int, int]] = {}
    duplicated: dict[bytes, list[tuple[int, int]]] = {}
    for line, file_index, key, value in records:
        if key in duplicated:
            duplicated[key].append((file_index, line))
        elif key in unique:
            del unique[key]
            duplicated[key] = [where.pop(key), (file_index, line)]
        else:
            unique[key] = value
            where[key] = (file_index, line)
    for places in duplicated.values():
        places.sort()
    return unique, duplicated
