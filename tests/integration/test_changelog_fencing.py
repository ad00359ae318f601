"""Fenced changelog writers on real Kafka (``tables/fence.py``, issue #14 item 4).

Two writers of one changelog partition, as an old owner that missed a rebalance and its successor:
once the successor holds the partition, the old owner can neither commit nor leave records that a
committed read (the bulk restore's, a standby's) would apply.
"""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from faust.types import TP

from tests.integration.helpers import read_topic
from vsync_stream.tables.fence import ChangelogWriters
from vsync_stream.tables.restore import _fetch

pytestmark = pytest.mark.integration


async def _topic(bootstrap: str) -> str:
    name = f"fence-{uuid.uuid4().hex[:10]}-changelog"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs={"cleanup.policy": "compact"})])
    finally:
        await admin.close()
    return name


async def _transaction(writers: ChangelogWriters, topic: str, items: dict[bytes, bytes], commit: bool = True) -> None:
    held = writers.writer(0)
    assert held is not None
    producer, _lock = held
    await producer.begin_transaction()
    for key, value in items.items():
        await producer.send(topic, key=key, value=value, partition=0)
    await producer.flush()
    if commit:
        await producer.commit_transaction()


async def _restore_view(bootstrap: str, topic: str) -> dict[bytes, bytes]:
    """What the bulk restore applies: its own read_committed Fetch, aborted transactions skipped."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client.set_topics([topic])
        rows: dict[bytes, bytes] = {}
        position = 0
        for _ in range(20):
            fetched = await _fetch(client, {TP(topic, 0): position})
            if TP(topic, 0) not in fetched:
                continue
            batches, end = fetched[TP(topic, 0)]
            for batch in batches:
                for record in batch:
                    rows[record.key] = record.value
            if end <= position:
                break
            position = end
        return rows
    finally:
        await client.close()


async def test_the_new_owner_fences_the_old_one(kafka_bootstrap: str) -> None:
    topic = await _topic(kafka_bootstrap)
    old = ChangelogWriters(topic, kafka_bootstrap, {})
    new = ChangelogWriters(topic, kafka_bootstrap, {})
    try:
        await old.own({0})
        await _transaction(old, topic, {b"k1": b"old-1", b"k2": b"old-2"})
        # The old owner is stopped in the middle of a batch: its transaction is open.
        await _transaction(old, topic, {b"k1": b"zombie-open"}, commit=False)
        await new.own({0})  # the successor: aborts the open transaction, bumps the epoch
        await _transaction(new, topic, {b"k1": b"new-1"})
        # The zombie runs again: neither its open transaction nor a new one gets through.
        producer, _lock = old.writer(0)  # type: ignore[misc]
        with pytest.raises(KafkaError):
            await producer.commit_transaction()
        # aiokafka's transaction manager is in its fatal state: even beginning fails (an assertion)
        with pytest.raises((KafkaError, AssertionError)):
            await _transaction(old, topic, {b"k2": b"zombie-later"})
        await _transaction(new, topic, {b"k3": b"new-3"})
    finally:
        await old.stop()
        await new.stop()
    committed = await read_topic(kafka_bootstrap, topic, isolation_level="read_committed")
    last = {r.key: r.value for r in sorted(committed, key=lambda r: r.offset)}
    assert last == {b"k1": b"new-1", b"k2": b"old-2", b"k3": b"new-3"}
    assert await _restore_view(kafka_bootstrap, topic) == last
    # The zombie's records are in the log (aborted); a read_uncommitted reader would apply them.
    everything = await read_topic(kafka_bootstrap, topic)
    assert b"zombie-open" in {r.value for r in everything}
