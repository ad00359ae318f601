"""The adapter's batched Kafka produce and its processes' counter reports (pure logic, fake producer)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiokafka.partitioner import murmur2

from vsync_stream.adapter_processes import _read_reports, _Reporter
from vsync_stream.bridges.kafka_produce import BatchProducer
from vsync_stream.bridges.pulsar_source import Tally
from vsync_stream.domain.events import KeyChange, decode_change
from vsync_stream.errors import InvalidEvent
from vsync_stream.metrics import DEAD_LETTERS, EVENTS_FORWARDED, EVENTS_RECEIVED


class _Batch:
    def __init__(self, room: int) -> None:
        self.records: list[tuple[bytes, bytes]] = []
        self.room = room

    def append(self, *, key: bytes, value: bytes, timestamp: Any) -> Any:
        if len(self.records) >= self.room:
            return None
        self.records.append((key, value))
        return object()

    def record_count(self) -> int:
        return len(self.records)


class _Producer:
    """Records what the sink hands to aiokafka, in order."""

    def __init__(self, room: int = 3) -> None:
        self.sent: list[tuple[str, int | None, list[tuple[bytes, bytes]]]] = []
        self.room = room

    def create_batch(self) -> _Batch:
        return _Batch(self.room)

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> Any:
        self.sent.append((topic, partition, batch.records))
        return _done()

    async def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> Any:
        self.sent.append((topic, partition, [(key or b"", value)]))
        return _done()


def _done() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def _change(i: int, key: str) -> KeyChange:
    return KeyChange(f"00000000-0000-4000-8000-{i:012d}", "key.created", 1_700_000_000_000 + i, i, key, "EMAIL",
                     "12345678", "a" * 64, "00000000-0000-4000-8000-000000000001")


def test_batches_go_to_the_default_partitioners_partition_in_order() -> None:
    async def run() -> _Producer:
        producer = _Producer(room=3)
        sink = BatchProducer(producer, "key-events", "dead")  # type: ignore[arg-type]
        changes = [_change(i, f"k{i % 5}@x.com") for i in range(40)]
        error = InvalidEvent("not_json", "payload is not JSON")
        done = await sink.submit(changes, [(b"{bad", error, {"topic": "t", "messageId": "1"})])
        await done
        return producer

    producer = asyncio.run(run())
    seen: list[tuple[int, KeyChange]] = []
    for topic, partition, records in producer.sent:
        if topic == "dead":
            continue
        assert topic == "key-events" and 1 <= len(records) <= 3
        for key, value in records:
            assert partition == (murmur2(key) & 0x7FFFFFFF) % 4  # where Faust's producer puts the key too
            seen.append((partition, decode_change(value)))
    assert sorted(c.event_id for _, c in seen) == sorted(_change(i, "").event_id for i in range(40))
    for key in {c.key for _, c in seen}:  # per-key order kept
        versions = [c.version for _, c in seen if c.key == key]
        assert versions == sorted(versions)
    assert [t for t, _, _ in producer.sent].count("dead") == 1


def test_child_counter_reports_reach_the_supervisors_counters() -> None:
    read_fd, write_fd = os.pipe()
    tally = Tally()
    reporter = _Reporter(write_fd, tally)
    before = (EVENTS_RECEIVED._value.get(), EVENTS_FORWARDED._value.get())
    dead_before = DEAD_LETTERS.labels(stage="adapter", reason="test_only_reason")._value.get()
    tally.received, tally.forwarded = 7, 5
    reporter.report()
    DEAD_LETTERS.labels(stage="adapter", reason="test_only_reason").inc()  # what dead_letter_record does
    tally.received, tally.forwarded = 9, 9
    reporter.report()
    reporter.report()  # nothing new: nothing sent
    os.close(write_fd)
    # Reading in this process adds the deltas again to the same counters (a supervisor's view).
    _read_reports(os.fdopen(read_fd, "rb"))
    assert (EVENTS_RECEIVED._value.get() - before[0], EVENTS_FORWARDED._value.get() - before[1]) == (9, 9)
    assert DEAD_LETTERS.labels(stage="adapter", reason="test_only_reason")._value.get() - dead_before == 2
