"""The simulator's packed CID log, its paging, and the CID file store (no gRPC)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from vsync_stream.domain.vsync import vsync_hex
from vsync_stream.simulator.cid_files import CidFileStore
from vsync_stream.simulator.model import CidLog, CidLogEvent, DictModel
from vsync_stream.simulator.population import PopulationGenerator

P1 = "12345678"
CIDS = [hashlib.sha256(bytes([i])).hexdigest() for i in range(50)]


def test_cid_log_packs_and_unpacks_events() -> None:
    log = CidLog()
    acc = 0
    for i, cid in enumerate(CIDS[:5]):
        acc ^= int(cid, 16)
        log.append(cid, "ADDED" if i % 2 == 0 else "REMOVED", 1000 + i // 2, acc)
    log.append(CIDS[0], "REMOVED", 999, 0)  # a clock stepping back does not unsort the log
    assert len(log) == 6
    assert log[0] == CidLogEvent(CIDS[0], "ADDED", 1000, CIDS[0])
    assert log[3] == CidLogEvent(CIDS[3], "REMOVED", 1001, vsync_hex(int(CIDS[0], 16) ^ int(CIDS[1], 16)
                                                                     ^ int(CIDS[2], 16) ^ int(CIDS[3], 16)))
    assert log[5].timestamp_ms == 1002 and log[5].vsync_after == "0" * 64
    assert [log.first_at_or_after(t) for t in (0, 1000, 1001, 1002, 1003)] == [0, 0, 2, 4, 6]
    with pytest.raises(IndexError):
        log[6]


class Clock:
    def __init__(self) -> None:
        self.now = 10_000

    def __call__(self) -> int:
        return self.now


def test_cid_log_page_is_start_inclusive_end_exclusive_and_limited() -> None:
    clock = Clock()
    model = DictModel(clock_ms=clock)
    population = PopulationGenerator([P1], seed=3)
    for i in range(10):
        clock.now = 10_000 + i // 2  # two events per millisecond
        model.tamper_create(population.entry(key_type="EVP", participant=P1))
    log = model.cid_log(P1, "EVP")
    events, more = model.cid_log_page(P1, "EVP", 10_001, 10_004, 3)
    assert events == log[2:5] and more
    events, more = model.cid_log_page(P1, "EVP", 10_001, 10_004, 6)
    assert events == log[2:8] and not more
    assert model.cid_log_page(P1, "EVP", 10_000, None, 100) == (log, False)
    assert model.cid_log_page(P1, "EVP", 10_004, 10_002, 5) == ([], False)
    assert model.cid_log_page(P1, "CPF", 0, None, 5) == ([], False)


class StoreClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.asyncio
async def test_cid_file_jobs_move_on_a_timer_and_write_the_dict_format(tmp_path: Path) -> None:
    clock = StoreClock()
    store = CidFileStore(tmp_path / "files", delay_s=1.0, upper_fraction=0.5, chunk_bytes=100, seed=1, clock=clock)
    job = store.create(P1, "EVP", list(CIDS), 1_700_000_000_000)
    assert store.status(job) == "REQUESTED"
    clock.now += 0.6
    assert store.status(job) == "PROCESSING"
    assert job.writer is not None
    await job.writer
    clock.now += 0.5
    assert store.status(job) == "AVAILABLE"

    content = b"".join([chunk async for chunk in store.chunks(job)])
    assert len(content) == job.byte_size == 65 * len(CIDS)
    assert hashlib.sha256(content).hexdigest() == job.sha256 == store.announced_sha256(job)
    lines = content.decode("ascii").split("\n")
    assert lines[-1] == "" and sorted(line.lower() for line in lines[:-1]) == sorted(CIDS)
    upper = sum(line != line.lower() for line in lines[:-1])
    assert 0 < upper < len(CIDS)
    assert [line.lower() for line in lines[:-1]] != CIDS, "shuffled"

    store.corruption = "SHA256"
    assert store.announced_sha256(job) != job.sha256
    store.corruption = "TRUNCATE"
    assert len(b"".join([chunk async for chunk in store.chunks(job)])) == len(content) - 1

    store.outcome = "ERROR"
    failed = store.create(P1, "EVP", list(CIDS), 1_700_000_000_000)
    clock.now += 2
    assert store.status(failed) == "ERROR" and failed.writer is None
    await store.close()
    assert not job.path.exists() and (tmp_path / "files").is_dir(), "a given directory is kept, its files go"
    assert store.get(job.job_id) is None


@pytest.mark.asyncio
async def test_cid_file_store_makes_and_removes_its_own_directory() -> None:
    store = CidFileStore(delay_s=0.0)
    job = store.create(P1, "EVP", [], 0)
    assert job.writer is not None
    await job.writer
    assert store.status(job) == "AVAILABLE" and job.byte_size == 0
    assert job.sha256 == hashlib.sha256(b"").hexdigest()
    directory = job.path.parent
    await store.close()
    assert not directory.exists()
