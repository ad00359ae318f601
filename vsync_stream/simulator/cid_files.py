"""The DICT simulator's CID files: asynchronous jobs that snapshot a CID set to a file on disk.

BCB DICT API, "Arquivos de CIDs" (DESIGN 2.6): the participant asks for a file of all CIDs of a
(participant, key type) and gets a job id; the job goes REQUESTED → PROCESSING → AVAILABLE (or
ERROR / UNAVAILABLE), and once AVAILABLE the file has a URL, a byte size and a SHA-256. Content: one
CID per line, each line ending in ``"\\n"`` (65 bytes per CID), no order, hex that may be upper case.

Here the snapshot is taken when the job is created (a list of the model's CID strings) and written
by a worker thread to a temporary file, hashing on the way, so tens of millions of CIDs never become
one giant string; downloads stream the file from disk. The status moves on a timer
(``delay_s``) so tests are quick. Fault hooks: ``outcome`` (jobs created while it is set end as
ERROR or UNAVAILABLE) and ``corruption`` (downloads announce a wrong SHA-256, or lose their last byte).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

JobStatus = Literal["REQUESTED", "PROCESSING", "AVAILABLE", "UNAVAILABLE", "ERROR"]
Outcome = Literal["AVAILABLE", "ERROR", "UNAVAILABLE"]
Corruption = Literal["SHA256", "TRUNCATE"]

DEFAULT_CHUNK_BYTES = 1 << 20  # 1 MiB per streamed message, well under gRPC's 4 MiB default
_WRITE_BATCH = 16_384  # lines per write


@dataclass(slots=True)
class CidFileJob:
    """One CID file job; ``byte_size`` (bytes) and ``sha256`` (64 lower-case hex) once written."""

    job_id: str
    participant: str
    key_type: str
    requested_at_ms: int
    created_at: float  # the store's clock, seconds
    outcome: Outcome
    path: Path
    byte_size: int | None = None
    sha256: str | None = None
    failed: bool = False
    writer: asyncio.Task[None] | None = field(default=None, repr=False)


class CidFileStore:
    """The CID file jobs of one simulator, and their files under one directory.

    Args:
        directory: where files go; a new temporary directory (removed by :meth:`close`) when None.
            In a given directory only this store's files are removed.
        delay_s: seconds from request to AVAILABLE: REQUESTED for the first half, PROCESSING for
            the second (and for as long as the file is still being written).
        upper_fraction: share of lines written in upper-case hex, 0..1 (the DICT may send either).
        chunk_bytes: bytes per streamed download message.
        seed: seed of the shuffle and of the upper-case choice; random when None.
        clock: seconds, monotonic; inject one to test without sleeping.
    """

    def __init__(self, directory: str | Path | None = None, *, delay_s: float = 0.5, upper_fraction: float = 0.25,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, seed: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0.0 <= upper_fraction <= 1.0:
            raise ValueError("upper_fraction must be between 0 and 1")
        self._given_directory = Path(directory) if directory is not None else None
        self._directory: Path | None = self._given_directory
        self.delay_s = delay_s
        self.upper_fraction = upper_fraction
        self.chunk_bytes = chunk_bytes
        self.outcome: Outcome = "AVAILABLE"
        self.corruption: Corruption | None = None
        self._rng = random.Random(seed)
        self._clock = clock
        self._jobs: dict[str, CidFileJob] = {}
        self._cancel = threading.Event()

    def create(self, participant: str, key_type: str, cids: list[str], requested_at_ms: int) -> CidFileJob:
        """Start a job over a snapshot of CIDs; the file is written in a worker thread.

        Must be called from the event loop. The list is shuffled in place and then only read, so
        pass a fresh one (``DictModel.cid_snapshot``).

        Args:
            participant: ISPB, 8 digits.
            key_type: one of the five key types.
            cids: the CIDs at request time, 64 lower-case hex each.
            requested_at_ms: the request time, epoch milliseconds.

        Returns:
            The new job.
        """
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="vsync-dict-cid-files-"))
        else:
            self._directory.mkdir(parents=True, exist_ok=True)
        job_id = str(uuid.uuid4())
        job = CidFileJob(job_id, participant, key_type, requested_at_ms, self._clock(), self.outcome,
                         self._directory / f"{job_id}.cids")
        self._jobs[job_id] = job
        if job.outcome == "AVAILABLE":
            seed = self._rng.getrandbits(64)
            job.writer = asyncio.get_running_loop().create_task(self._write(job, cids, seed))
        log.info("CID file job %s for %s/%s: %d CIDs", job_id, participant, key_type, len(cids))
        return job

    def get(self, job_id: str) -> CidFileJob | None:
        """The job, or None when unknown."""
        return self._jobs.get(job_id)

    def status(self, job: CidFileJob) -> JobStatus:
        """Where the job stands now (time-based; see ``delay_s``)."""
        elapsed = self._clock() - job.created_at
        if elapsed < self.delay_s / 2:
            return "REQUESTED"
        if elapsed < self.delay_s:
            return "PROCESSING"
        if job.outcome != "AVAILABLE":
            return job.outcome
        if job.writer is None or not job.writer.done():
            return "PROCESSING"
        return "ERROR" if job.failed else "AVAILABLE"

    def announced_sha256(self, job: CidFileJob) -> str:
        """The SHA-256 to announce for an AVAILABLE job: the real one, or a wrong one under the
        ``SHA256`` corruption fault."""
        if job.sha256 is None:
            raise RuntimeError(f"CID file job {job.job_id} has no file yet")
        if self.corruption == "SHA256":
            return hashlib.sha256(job.sha256.encode("ascii")).hexdigest()
        return job.sha256

    async def chunks(self, job: CidFileJob) -> AsyncIterator[bytes]:
        """The content of an AVAILABLE job's file, ``chunk_bytes`` at a time, read off the event loop.

        Under the ``TRUNCATE`` corruption fault the last byte is left out.
        """
        remaining = (job.byte_size or 0) - (1 if self.corruption == "TRUNCATE" else 0)
        with job.path.open("rb") as source:
            while remaining > 0:
                data = await asyncio.to_thread(source.read, min(self.chunk_bytes, remaining))
                if not data:
                    return
                remaining -= len(data)
                yield data

    async def close(self) -> None:
        """Stop the writers and delete the files (and the directory when this store made it)."""
        self._cancel.set()
        writers = [job.writer for job in self._jobs.values() if job.writer is not None]
        await asyncio.gather(*writers, return_exceptions=True)
        for job in self._jobs.values():
            job.path.unlink(missing_ok=True)
        self._jobs.clear()
        if self._directory is not None and self._given_directory is None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
        self._cancel = threading.Event()

    async def _write(self, job: CidFileJob, cids: list[str], seed: int) -> None:
        try:
            job.byte_size, job.sha256 = await asyncio.to_thread(
                _write_cid_file, job.path, cids, seed, self.upper_fraction, self._cancel)
        except (OSError, _Cancelled) as exc:
            job.failed = True
            if isinstance(exc, OSError):
                log.error("CID file job %s failed to write %s: %s", job.job_id, job.path, exc.strerror)


class _Cancelled(Exception):
    """The store closed while a file was being written."""


def _write_cid_file(path: Path, cids: list[str], seed: int, upper_fraction: float,
                    cancel: threading.Event) -> tuple[int, str]:
    """Shuffle ``cids`` in place and write them one per line; runs in a worker thread.

    Returns:
        ``(byte_size, sha256)``: bytes written and the lower-case hex SHA-256 of the content.

    Raises:
        OSError: the file cannot be written.
        _Cancelled: ``cancel`` was set.
    """
    rng = random.Random(seed)
    rng.shuffle(cids)
    digest, size = hashlib.sha256(), 0
    with path.open("wb") as out:
        for start in range(0, len(cids), _WRITE_BATCH):
            if cancel.is_set():
                raise _Cancelled()
            batch = cids[start:start + _WRITE_BATCH]
            if upper_fraction:
                batch = [cid.upper() if rng.random() < upper_fraction else cid for cid in batch]
            data = ("\n".join(batch) + "\n").encode("ascii")
            digest.update(data)
            out.write(data)
            size += len(data)
    return size, digest.hexdigest()
