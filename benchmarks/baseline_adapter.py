"""Today's adapter, frozen for the live-path benchmark's baseline (the adapter before issue #15).

One process; per Pulsar batch (500 messages, receiver queue 1,000): decode and validate each
message, the CID with ``hmac.digest``, one ``AIOKafkaProducer.send`` per record, the next batch
received only after this one was handed to the producer, up to 4 batches waiting for Kafka, then
one ``acknowledge`` per message. Same settings and topics as ``vsync-stream adapter``. Run as
``python benchmarks/baseline_adapter.py`` with the worker's environment.
"""

from __future__ import annotations

import asyncio
import hmac
import signal
from typing import Any

import pulsar
from aiokafka import AIOKafkaProducer

from vsync_stream.bridges.kafka_topics import ensure_topics, product_topics
from vsync_stream.bridges.pulsar_source import _quiet_logger
from vsync_stream.dead_letters import dead_letter_record
from vsync_stream.domain import cid
from vsync_stream.domain.events import change_of, decode_event, encode_change
from vsync_stream.errors import InvalidEvent
from vsync_stream.names import ENTRIES_TABLE, changelog_topic
from vsync_stream.settings import Settings

BATCH, WAIT_MS, IN_FLIGHT = 500, 10, 4


def _hmac_cid(request_id: bytes, attributes: str) -> str:
    return hmac.digest(request_id, attributes.encode("utf-8"), "sha256").hex()


async def main() -> None:
    cid.cid_of = _hmac_cid  # today's CID (compute_cid looks cid_of up at each call)
    s = Settings()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await ensure_topics(s.kafka_bootstrap, product_topics(
        s.key_events_topic, changelog_topic(s.app_id, ENTRIES_TABLE), s.dead_letter_topic, s.partitions,
        s.core_notices_topic), s.replication_factor)
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all", linger_ms=2,
                                max_batch_size=1024 * 1024, client_id=f"{s.app_id}-baseline-adapter")
    await producer.start()
    client = pulsar.Client(s.pulsar_url, operation_timeout_seconds=30, logger=_quiet_logger())
    consumer = client.subscribe(s.pulsar_topic, s.pulsar_subscription, consumer_type=pulsar.ConsumerType.KeyShared,
                                initial_position=pulsar.InitialPosition.Earliest, receiver_queue_size=1000,
                                batch_receive_policy=pulsar.ConsumerBatchReceivePolicy(BATCH, 8 << 20, WAIT_MS))

    async def settle(messages: list[Any], pending: list[Any]) -> None:
        await asyncio.gather(*pending)
        await asyncio.to_thread(lambda: [consumer.acknowledge(m) for m in messages])

    in_flight: set[asyncio.Task[None]] = set()
    try:
        while not stop.is_set():
            messages = await asyncio.to_thread(consumer.batch_receive)
            pending = []
            for message in messages:
                payload = message.data()
                try:
                    change = change_of(decode_event(payload, s.max_event_bytes))
                except InvalidEvent as exc:
                    record = dead_letter_record(payload, exc, stage="adapter", source={"topic": s.pulsar_topic})
                    pending.append(await producer.send(s.dead_letter_topic, value=record))
                else:
                    pending.append(await producer.send(s.key_events_topic, value=encode_change(change),
                                                       key=change.key.encode("utf-8")))
            if messages:
                in_flight.add(asyncio.create_task(settle(messages, pending)))
            if len(in_flight) >= IN_FLIGHT:
                done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
        await asyncio.gather(*in_flight)
    finally:
        await producer.stop()
        await asyncio.to_thread(client.close)


if __name__ == "__main__":
    asyncio.run(main())
