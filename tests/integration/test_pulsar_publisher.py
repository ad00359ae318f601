"""EventPublisher against a real Pulsar at ``VSYNC_PULSAR_URL`` (default pulsar://127.0.0.1:16650).

Start one with ``deploy/local/stack up``. These tests fail, not skip, when Pulsar is unreachable:
the publisher is how the end-to-end pipeline is driven, so a silent skip would hide a broken stack.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
import uuid
from collections.abc import Iterator

import pulsar
import pytest

from vsync_stream.domain.events import KeyEvent, decode_event, event_to_json
from vsync_stream.errors import PublishFailed
from vsync_stream.simulator.model import DictModel
from vsync_stream.simulator.population import generate_entries, random_update_changes
from vsync_stream.simulator.publisher import EventPublisher

pytestmark = pytest.mark.integration

PULSAR_URL = os.environ.get("VSYNC_PULSAR_URL", "pulsar://127.0.0.1:16650")
P1, P2 = "12345678", "00000208"


@pytest.fixture(scope="module")
def client() -> Iterator[pulsar.Client]:
    client = pulsar.Client(PULSAR_URL, operation_timeout_seconds=10,
                           logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
    try:
        client.create_producer(f"persistent://public/default/probe-{uuid.uuid4().hex}").close()
    except Exception as exc:
        client.close()
        pytest.fail(f"cannot reach Pulsar at {PULSAR_URL} ({exc}); start it with `deploy/local/stack up` "
                    "or point VSYNC_PULSAR_URL at a running broker")
    yield client
    client.close()


@pytest.fixture
def topic() -> str:
    return f"persistent://public/default/dict-events-test-{uuid.uuid4().hex}"


def subscribe(client: pulsar.Client, topic: str) -> pulsar.Consumer:
    # Subscribe before publishing: without a subscription a topic need not retain messages.
    return client.subscribe(topic, f"test-{uuid.uuid4().hex[:8]}", consumer_type=pulsar.ConsumerType.Exclusive)


def drain(consumer: pulsar.Consumer, count: int, timeout_ms: int = 20_000) -> list[pulsar.Message]:
    """Receive until ``count`` distinct messages arrived; the first delivery of each, in order.

    Pulsar delivers at least once (pulsar-lite in particular redelivers under load), so a message
    may come twice with the same id: the pipeline folds duplicates away, here they are skipped.
    """
    seen: set[str] = set()
    messages: list[pulsar.Message] = []
    while len(messages) < count:
        message = consumer.receive(timeout_ms)
        consumer.acknowledge(message)
        message_id = str(message.message_id())
        if message_id not in seen:
            seen.add(message_id)
            messages.append(message)
    return messages


def history(n: int, seed: int) -> list[KeyEvent]:
    """Creates, then updates and deletes of some of the keys, as the connector would publish them."""
    model, rng = DictModel(), random.Random(seed)
    events = [model.create(entry) for entry in generate_entries(n, [P1, P2], seed=seed)]
    for event in rng.sample(events, n // 4):
        current = model.entry(event.key)
        assert current is not None
        events.append(model.update(event.key, **random_update_changes(current, rng)))
    events += [model.delete(e.key) for e in rng.sample(events[:n], n // 10)]
    return events


@pytest.mark.asyncio
async def test_async_publish_keys_payloads_and_order(client: pulsar.Client, topic: str) -> None:
    events = history(400, seed=1)
    consumer = subscribe(client, topic)
    async with EventPublisher(PULSAR_URL, topic) as publisher:
        assert await publisher.publish_many(events) == len(events)
        await publisher.flush()
        assert (publisher.published, publisher.failed, publisher.in_flight) == (len(events), 0, 0)
    messages = drain(consumer, len(events))
    consumer.close()
    assert [m.partition_key() for m in messages] == [e.key for e in events]
    for message, event in zip(messages, events, strict=True):
        assert message.data() == message.data().decode("utf-8").encode("utf-8")
        decoded = decode_event(message.data())
        assert event_to_json(decoded) == event_to_json(event)
        assert message.event_timestamp() == event.occurred_at_ms


@pytest.mark.asyncio
async def test_send_waits_for_the_ack(client: pulsar.Client, topic: str) -> None:
    event = history(1, seed=2)[0]
    consumer = subscribe(client, topic)
    async with EventPublisher(PULSAR_URL, topic) as publisher:
        await publisher.send(event)
        assert publisher.published == 1 and publisher.in_flight == 0
    assert decode_event(drain(consumer, 1)[0].data()).event_id == event.event_id
    consumer.close()


def test_plain_synchronous_use(client: pulsar.Client, topic: str) -> None:
    events = history(200, seed=3)
    consumer = subscribe(client, topic)
    with EventPublisher(PULSAR_URL, topic, max_in_flight=16) as publisher:
        for event in events:
            publisher.publish_sync(event)
            assert publisher.in_flight <= 16
        publisher.flush_sync(timeout_s=30)
        assert publisher.published == len(events)
    assert [m.partition_key() for m in drain(consumer, len(events))] == [e.key for e in events]
    consumer.close()


@pytest.mark.asyncio
async def test_an_existing_client_is_shared_and_left_open(client: pulsar.Client, topic: str) -> None:
    events = history(10, seed=4)
    consumer = subscribe(client, topic)
    async with EventPublisher(topic=topic, client=client) as publisher:
        await publisher.publish_many(events)
        await publisher.flush()
    drain(consumer, len(events))
    consumer.close()  # the shared client still works after the publisher stopped


@pytest.mark.asyncio
async def test_hundred_thousand_events_with_batching(client: pulsar.Client, topic: str) -> None:
    model = DictModel()
    events = [model.create(entry) for entry in generate_entries(100_000, [P1, P2], seed=5)]
    consumer = subscribe(client, topic)
    async with EventPublisher(PULSAR_URL, topic) as publisher:
        started = time.perf_counter()
        await publisher.publish_many(events)
        await publisher.flush()
        elapsed = time.perf_counter() - started
        assert publisher.published == len(events) and publisher.failed == 0
    print(f"\npublished {len(events)} events in {elapsed:.2f} s: {len(events) / elapsed:,.0f} events/s")
    keys = [m.partition_key() for m in drain(consumer, len(events))]
    consumer.close()
    assert keys == [e.key for e in events]


@pytest.mark.asyncio
async def test_flush_raises_when_a_send_failed(client: pulsar.Client, topic: str) -> None:
    good = history(5, seed=6)
    entry = good[0].entry
    assert entry is not None
    # A payload over the broker's 5 MB message limit is refused with MessageTooBig.
    huge = dataclasses.replace(good[0], entry=dataclasses.replace(entry, owner_name="x" * 6_000_000))
    async with EventPublisher(PULSAR_URL, topic) as publisher:
        await publisher.publish_many(good)
        await publisher.publish(huge)
        with pytest.raises(PublishFailed, match="1 sends"):
            await publisher.flush()
        assert publisher.published == len(good)
        await publisher.flush()  # failures are reported once


def test_start_fails_clearly_when_pulsar_is_unreachable() -> None:
    publisher = EventPublisher("pulsar://127.0.0.1:9", "persistent://public/default/nowhere", operation_timeout_s=2)
    with pytest.raises(PublishFailed, match="check that Pulsar is up"):
        publisher.start_sync()
    with pytest.raises(PublishFailed, match="not started"):
        publisher.publish_sync(history(1, seed=7)[0])
    assert publisher.in_flight == 0
