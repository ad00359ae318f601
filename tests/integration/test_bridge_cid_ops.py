"""CID file, CID event log and entry-by-CID through the real BridgeClient and the real DICT simulator.

Every test runs a gRPC server on 127.0.0.1 (port 0) and talks to it with the real client; no broker
is needed. The simulator keeps the DICT's own rate limits unless a test is about pacing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import pytest
import pytest_asyncio

from vsync_stream.bridges.dict_bridge import BridgeClient, CidEvent, RateLimit
from vsync_stream.bridges.generated import vsync_bridge_pb2 as pb
from vsync_stream.domain.cid import compute_cid
from vsync_stream.domain.vsync import vsync_hex
from vsync_stream.errors import (
    BridgeError,
    BridgeNotFound,
    BridgeUnavailable,
    CidFileCorrupt,
    CidFileFailed,
    RateLimited,
)
from vsync_stream.simulator.model import DictModel
from vsync_stream.simulator.population import PopulationGenerator
from vsync_stream.simulator.server import DictSimulator, TokenBucket

P1, P2 = "12345678", "00000208"
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
EPOCH_MS = int(EPOCH.timestamp()) * 1000
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)  # before any wall-clock event
SimulatorFactory = Callable[..., Any]
ClientFactory = Callable[..., Any]


class TickClock:
    """A model clock in epoch ms that advances 1 ms every ``every`` readings (ties when > 1)."""

    def __init__(self, every: int = 1, start_ms: int = EPOCH_MS) -> None:
        self.every, self.readings, self.start_ms = every, 0, start_ms

    def __call__(self) -> int:
        self.readings += 1
        return self.start_ms + self.readings // self.every


def ms(value: int) -> datetime:
    return EPOCH + timedelta(milliseconds=value - EPOCH_MS)


def to_ms(moment: datetime) -> int:
    return EPOCH_MS + (moment - EPOCH) // timedelta(milliseconds=1)


def log_as_events(model: DictModel, participant: str, key_type: str) -> list[tuple[str, str, datetime]]:
    return [(e.cid, e.type, ms(e.timestamp_ms)) for e in model.cid_log(participant, key_type)]


def churn(model: DictModel, population: PopulationGenerator, n: int, key_type: str = "EVP") -> None:
    """Creates, updates and deletes on (P1, key_type), plus noise on P2: about 2n log events on P1."""
    rng = random.Random(11)
    keys: list[str] = []
    for _ in range(n):
        entry = population.entry(key_type=key_type, participant=P1)
        model.create(entry)
        keys.append(entry.key)
        model.create(population.entry(key_type=key_type, participant=P2))
        roll = rng.random()
        if roll < 0.4:
            model.update(rng.choice(keys), account_number=str(rng.randrange(1, 10**8)))
        elif roll < 0.55:
            model.delete(keys.pop(rng.randrange(len(keys))))


@pytest_asyncio.fixture
async def simulator_factory(tmp_path: Path) -> AsyncIterator[SimulatorFactory]:
    made: list[DictSimulator] = []

    async def make(model: DictModel | None = None, **options: Any) -> DictSimulator:
        options.setdefault("cid_file_delay_s", 0.2)
        options.setdefault("seed", 7)
        simulator = DictSimulator(model, **options)
        await simulator.start("127.0.0.1", 0)
        made.append(simulator)
        return simulator

    yield make
    for simulator in made:
        await simulator.stop()


@pytest_asyncio.fixture
async def client_factory() -> AsyncIterator[ClientFactory]:
    clients: list[BridgeClient] = []

    async def make(simulator: DictSimulator, **overrides: Any) -> BridgeClient:
        settings: dict[str, Any] = {"deadline_s": 2.0, "max_attempts": 4, "max_retry_s": 5.0,
                                    "backoff_initial_s": 0.01, "backoff_max_s": 0.05}
        settings.update(overrides)
        client = BridgeClient(simulator.target, **settings)
        await client.start()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.stop()


@pytest.fixture
def population() -> PopulationGenerator:
    return PopulationGenerator([P1, P2], seed=21)


# ------------------------------------------------------------------ CID event log


@pytest.mark.asyncio
async def test_cid_event_pages_overlap_and_carry_the_vsync_after(
        simulator_factory: SimulatorFactory, client_factory: ClientFactory, population: PopulationGenerator) -> None:
    model = DictModel(clock_ms=TickClock())
    churn(model, population, 700)
    log = model.cid_log(P1, "EVP")
    assert len(log) > 1000
    prefix, acc = {}, 0  # unique timestamps here, so a timestamp names one log position
    for event in log:
        acc ^= int(event.cid, 16)
        prefix[event.timestamp_ms] = vsync_hex(acc)
    simulator = await simulator_factory(model)
    client = await client_factory(simulator)

    pages, start = [], EPOCH
    while True:
        page = await client.list_cid_events(P1, "EVP", start, None, limit=200)
        pages.append(page)
        assert len(page.events) <= 200
        first, last = page.events[0], page.events[-1]
        assert page.vsync_after_first == prefix[to_ms(first.timestamp)]
        assert page.vsync_after_last == prefix[to_ms(last.timestamp)]
        if not page.has_more_elements:
            break
        start = last.timestamp
    assert len(pages) > 5
    for previous, page in zip(pages, pages[1:], strict=False):
        assert page.events[0] == previous.events[-1]  # the inclusive start repeats the boundary event
    assert pages[-1].vsync_after_last == model.vsync(P1, "EVP")

    walk = client.iter_cid_events(P1, "EVP", EPOCH, None)
    events = [(e.cid, e.type, e.timestamp) async for e in walk]
    assert events == log_as_events(model, P1, "EVP")
    assert walk.duplicates == walk.pages - 1 == len(pages) - 1
    assert walk.vsync_after_last == model.vsync(P1, "EVP")
    assert simulator.rejections.total() == 0


@pytest.mark.asyncio
async def test_walk_deduplicates_exactly_when_timestamps_are_shared(
        simulator_factory: SimulatorFactory, client_factory: ClientFactory, population: PopulationGenerator) -> None:
    model = DictModel(clock_ms=TickClock(every=9))  # several events per millisecond
    churn(model, population, 150)
    again = population.entry(key_type="EVP", participant=P1)
    for _ in range(3):  # the same CID added, removed and added again within a few milliseconds
        model.tamper_create(again)
        model.tamper_delete(again.key)
    model.tamper_create(again)
    expected = log_as_events(model, P1, "EVP")
    assert len({t for _, _, t in expected}) < len(expected)
    simulator = await simulator_factory(model)
    client = await client_factory(simulator)

    for page_size in (10, 200):  # about 40 pages, within the DICT's ListCidEvents bucket (100)
        events = [(e.cid, e.type, e.timestamp) async for e in client.iter_cid_events(P1, "EVP", EPOCH, None,
                                                                                       page_size=page_size)]
        assert events == expected
    since, until = expected[40][2], expected[260][2]
    window = [(e.cid, e.type, e.timestamp) async for e in client.iter_cid_events(P1, "EVP", since, until,
                                                                                   page_size=13)]
    assert window == [e for e in expected if since <= e[2] < until]
    assert client.pacer.waits.total() == 0 and simulator.rejections.total() == 0


@pytest.mark.asyncio
async def test_more_events_in_one_millisecond_than_a_page_cannot_be_walked(
        simulator_factory: SimulatorFactory, client_factory: ClientFactory, population: PopulationGenerator) -> None:
    model = DictModel(clock_ms=lambda: EPOCH_MS)
    for _ in range(12):
        model.tamper_create(population.entry(key_type="CPF", participant=P1))
    simulator = await simulator_factory(model)
    client = await client_factory(simulator)
    seen: list[CidEvent] = []
    with pytest.raises(BridgeError, match="CID file"):
        async for event in client.iter_cid_events(P1, "CPF", EPOCH, None, page_size=5):
            seen.append(event)
    assert len(seen) == 5


@pytest.mark.asyncio
async def test_list_cid_events_refuses_a_limit_over_200_and_an_inverted_range(
        simulator_factory: SimulatorFactory, client_factory: ClientFactory) -> None:
    simulator = await simulator_factory(DictModel())
    client = await client_factory(simulator)
    request = pb.ListCidEventsRequest(participant=P1, key_type=pb.KEY_TYPE_EVP, limit=201)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.ListCidEvents(request, timeout=2)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(BridgeError) as inverted:
        await client.list_cid_events(P1, "EVP", EPOCH, EPOCH - timedelta(seconds=1))
    assert inverted.value.status_code is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ValueError):
        client.iter_cid_events(P1, "EVP", EPOCH, None, page_size=201)
    page = await client.list_cid_events(P1, "EVP", EPOCH)
    assert page.events == [] and not page.has_more_elements and page.vsync_after_last is None


# ------------------------------------------------------------------ CID files


async def _pair_model(population: PopulationGenerator, n: int) -> DictModel:
    model = DictModel()
    for _ in range(n):
        model.create(population.entry(key_type="PHONE", participant=P1))
        model.create(population.entry(key_type="PHONE", participant=P2))
    return model


@pytest.mark.asyncio
async def test_cid_file_lifecycle_gives_the_snapshot_at_request_time(
        simulator_factory: SimulatorFactory, client_factory: ClientFactory, population: PopulationGenerator) -> None:
    model = await _pair_model(population, 1500)
    simulator = await simulator_factory(model, cid_file_chunk_bytes=1000)  # lines span chunks
    client = await client_factory(simulator)
    snapshot = model.cids(P1, "PHONE")

    job = await client.create_cid_file(P1, "PHONE")
    model.tamper_create(population.entry(key_type="PHONE", participant=P1))  # after the request: not in the file
    first = await client.get_cid_file(job)
    assert first.status in ("REQUESTED", "PROCESSING") and first.url is None and first.sha256 is None
    assert (first.participant, first.key_type) == (P1, "PHONE") and first.requested_at is not None
    status = await client.wait_for_cid_file(job, poll_interval_s=0.05, timeout_s=10)
    assert status.status == "AVAILABLE" and status.byte_size == 65 * len(snapshot)
    assert status.sha256 is not None and status.sha256 == status.sha256.lower() and len(status.sha256) == 64

    raw = b"".join([chunk async for chunk in client.download_cid_file(job)])
    lines = raw.split(b"\n")[:-1]
    assert all(len(line) == 64 for line in lines) and raw.endswith(b"\n")
    assert any(line != line.lower() for line in lines), "the simulator writes some upper-case lines"
    assert lines != sorted(lines), "the simulator shuffles the lines"

    download = client.download_cid_file(job, expected_byte_size=status.byte_size, expected_sha256=status.sha256)
    cids = [cid async for cid in download.cids()]
    assert set(cids) == snapshot and len(cids) == len(snapshot)
    assert (download.byte_size, download.sha256, download.received) == (status.byte_size, status.sha256,
                                                                         status.byte_size)
    assert simulator.rejections.total() == 0

    assert status.url is not None
    path = Path(urlparse(status.url).path)
    assert path.exists()
    await simulator.stop()
    assert not path.exists(), "the simulator deletes its CID files on stop"


@pytest.mark.asyncio
async def test_an_empty_pair_gives_an_empty_cid_file(
        simulator_factory: SimulatorFactory, client_factory: ClientFactory) -> None:
    simulator = await simulator_factory(DictModel(), cid_file_delay_s=0.0)
    client = await client_factory(simulator)
    job = await client.create_cid_file(P2, "EMAIL")
    status = await client.wait_for_cid_file(job, poll_interval_s=0.05, timeout_s=10)
    assert status.byte_size == 0
    assert [cid async for cid in client.download_cid_file(job).cids()] == []


@pytest.mark.asyncio
async def test_a_corrupt_cid_file_download_raises(
        simulator_factory: SimulatorFactory, client_factory: ClientFactory, population: PopulationGenerator) -> None:
    model = await _pair_model(population, 300)
    simulator = await simulator_factory(model, cid_file_delay_s=0.0)
    client = await client_factory(simulator)
    job = await client.create_cid_file(P1, "PHONE")
    good = await client.wait_for_cid_file(job, poll_interval_s=0.05, timeout_s=10)

    simulator.cid_files.corruption = "SHA256"
    with pytest.raises(CidFileCorrupt, match="SHA-256") as caught:
        async for _chunk in client.download_cid_file(job):
            pass
    assert caught.value.retriable
    with pytest.raises(CidFileCorrupt, match="another SHA-256"):  # caught before any data, from the status
        async for _chunk in client.download_cid_file(job, expected_sha256=good.sha256):
            pass

    simulator.cid_files.corruption = "TRUNCATE"
    with pytest.raises(CidFileCorrupt, match="truncated"):
        async for _cid in client.download_cid_file(job).cids():
            pass

    simulator.cid_files.corruption = None
    assert len([cid async for cid in client.download_cid_file(job).cids()]) == len(model.cids(P1, "PHONE"))


@pytest.mark.asyncio
async def test_cid_file_jobs_can_fail_and_unready_files_cannot_be_downloaded(
        simulator_factory: SimulatorFactory, client_factory: ClientFactory, population: PopulationGenerator) -> None:
    simulator = await simulator_factory(await _pair_model(population, 10), cid_file_delay_s=0.2)
    client = await client_factory(simulator)
    for outcome in ("ERROR", "UNAVAILABLE"):
        simulator.cid_files.outcome = outcome  # type: ignore[assignment]
        job = await client.create_cid_file(P1, "PHONE")
        with pytest.raises(CidFileFailed, match=outcome):
            await client.wait_for_cid_file(job, poll_interval_s=0.05, timeout_s=10)
    simulator.cid_files.outcome = "AVAILABLE"
    job = await client.create_cid_file(P1, "PHONE")
    with pytest.raises(BridgeError) as caught:
        async for _chunk in client.download_cid_file(job):
            pass
    assert caught.value.status_code is grpc.StatusCode.FAILED_PRECONDITION and not caught.value.retriable
    with pytest.raises(BridgeUnavailable, match="still"):
        await client.wait_for_cid_file(job, poll_interval_s=0.05, timeout_s=0.01)


# ------------------------------------------------------------------ entry by CID


@pytest.mark.asyncio
async def test_get_entry_by_cid_rebuilds_the_identical_cid(
        simulator_factory: SimulatorFactory, client_factory: ClientFactory, population: PopulationGenerator) -> None:
    model = DictModel()
    entries = [population.entry(key_type=kt, participant=P1) for kt in ("CPF", "CNPJ", "PHONE", "EMAIL", "EVP")]
    for entry in entries:
        model.tamper_create(entry)
    simulator = await simulator_factory(model)
    client = await client_factory(simulator)
    for entry in entries:
        got = await client.get_entry_by_cid(P1, entry.key_type, entry.cid.upper())
        assert got.request_id == entry.request_id and compute_cid(got) == entry.cid
        assert got == entry
    victim = entries[0]
    with pytest.raises(BridgeNotFound):
        await client.get_entry_by_cid(P2, victim.key_type, victim.cid)  # another participant's set
    model.tamper_delete(victim.key)
    with pytest.raises(BridgeNotFound):
        await client.get_entry_by_cid(P1, victim.key_type, victim.cid)
    with pytest.raises(ValueError):
        await client.get_entry_by_cid(P1, "EVP", "not a cid")
    assert simulator.calls["GetEntryByCid"] == len(entries) + 2


# ------------------------------------------------------------------ pacing and faults


@pytest.mark.asyncio
@pytest.mark.parametrize("concurrent", [True, False])
async def test_client_pacing_causes_no_rejection(
        simulator_factory: SimulatorFactory, client_factory: ClientFactory, population: PopulationGenerator,
        concurrent: bool) -> None:
    model = DictModel()
    entry = population.entry(key_type="EVP", participant=P1)
    model.create(entry)
    capacity, refill = 5, 20.0  # the DICT's buckets scaled down for speed
    simulator = await simulator_factory(model, rate_limits={"GetEntryByCid": TokenBucket(capacity, refill),
                                                            "VerifySync": TokenBucket(capacity, refill)})
    client = await client_factory(simulator, rate_limits={"GetEntryByCid": RateLimit(capacity, refill),
                                                          "VerifySync": RateLimit(capacity, refill)},
                                  # the widest margin these buckets allow (4 of 5 tokens in reserve):
                                  # up to 200 ms of arrival spread, which a loaded 2-core CI box reaches
                                  pacing_margin_s=0.19, max_attempts=1)
    vsync = model.vsync(P1, "EVP")
    calls = [client.get_entry_by_cid(P1, "EVP", entry.cid) for _ in range(3 * capacity)]
    calls += [client.verify_sync(P1, "EVP", vsync) for _ in range(3 * capacity)]
    if concurrent:
        results = await asyncio.gather(*calls)
    else:
        results = [await call for call in calls]
    assert len(results) == 6 * capacity
    assert simulator.rejections.total() == 0
    assert simulator.calls["GetEntryByCid"] == simulator.calls["VerifySync"] == 3 * capacity
    assert client.pacer.waits["GetEntryByCid"] > 0 and client.pacer.waits["VerifySync"] > 0


@pytest.mark.asyncio
async def test_without_pacing_the_same_calls_are_rejected(
        simulator_factory: SimulatorFactory, client_factory: ClientFactory, population: PopulationGenerator) -> None:
    """The control of the test above: the simulator does refuse an unpaced client."""
    model = DictModel()
    entry = population.entry(key_type="EVP", participant=P1)
    model.create(entry)
    simulator = await simulator_factory(model, rate_limits={"GetEntryByCid": TokenBucket(5, 20.0)})
    client = await client_factory(simulator, rate_limits={"GetEntryByCid": None}, max_attempts=1)
    results = await asyncio.gather(*(client.get_entry_by_cid(P1, "EVP", entry.cid) for _ in range(15)),
                                   return_exceptions=True)
    assert any(isinstance(r, RateLimited) for r in results)
    assert simulator.rejections["GetEntryByCid"] > 0


@pytest.mark.asyncio
async def test_an_unavailable_burst_is_retried_through(
        simulator_factory: SimulatorFactory, client_factory: ClientFactory, population: PopulationGenerator) -> None:
    model = await _pair_model(population, 50)
    simulator = await simulator_factory(model, cid_file_delay_s=0.0)
    client = await client_factory(simulator, max_attempts=6, max_retry_s=5.0)
    entry = next(iter(model.entries()))

    simulator.inject_unavailable(3, "GetEntryByCid")
    assert await client.get_entry_by_cid(entry.participant, entry.key_type, entry.cid) == entry
    assert simulator.calls["GetEntryByCid"] == 4 and simulator.injected["GetEntryByCid"] == 3

    simulator.inject_unavailable(2)  # any RPC: the walk's first page and the stream opening go through it
    events = [e async for e in client.iter_cid_events(P1, "PHONE", LONG_AGO, None)]
    assert len(events) == len(model.cid_log(P1, "PHONE"))
    simulator.inject_unavailable(2)
    job = await client.create_cid_file(P1, "PHONE")
    await client.wait_for_cid_file(job, poll_interval_s=0.05, timeout_s=10)
    simulator.inject_unavailable(2, "DownloadCidFile")
    assert len([c async for c in client.download_cid_file(job).cids()]) == len(model.cids(P1, "PHONE"))
    assert simulator.injected.total() == 9

    simulator.inject_unavailable(10, "GetEntryByCid")  # longer than the retries
    with pytest.raises(BridgeUnavailable):
        await client.get_entry_by_cid(entry.participant, entry.key_type, entry.cid)
    assert simulator.rejections.total() == 0
