"""Kafka produce in batches for the adapter: one record batch per partition per Pulsar batch.

``AIOKafkaProducer.send`` costs a future, a partitioner call and an accumulator append per record
(about 12 % of the adapter's profile at saturation, BENCHMARKS.md). :class:`BatchProducer` instead
groups a Pulsar batch's records by partition and hands each group to aiokafka as one
``BatchBuilder`` (``create_batch`` / ``send_batch``, aiokafka's public batch API): one future per
partition, not per record.

The partition of a record is the one aiokafka's ``DefaultPartitioner`` (murmur2 of the key, as the
Java client) gives it, so a key lands on the partition every other producer of the key-events topic
(Faust's, for reconciliation corrections) sends it to: per-key order and the fold's partition
ownership are unchanged. Records of one partition keep their order in the batch, and aiokafka
sends at most one request per broker at a time, so batches of one partition stay in order too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from vsync_stream.bridges.pulsar_source import Reject
from vsync_stream.dead_letters import dead_letter_record
from vsync_stream.domain.events import KeyChange, encode_change


class BatchProducer:
    """The adapter's :class:`~vsync_stream.bridges.pulsar_source.Sink` over an aiokafka producer.

    Args:
        producer: a started ``AIOKafkaProducer`` (``acks="all"``: acknowledged means held by Kafka).
        topic: the key-events topic (records keyed by Pix key).
        dead_letter_topic: where rejected messages go, with their reason and original bytes.
        source_stage: the ``stage`` written into dead letters.
    """

    def __init__(self, producer: AIOKafkaProducer, topic: str, dead_letter_topic: str,
                 source_stage: str = "adapter") -> None:
        self.producer = producer
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self.stage = source_stage
        self._partitions: list[int] = []
        self._partitioner = DefaultPartitioner()

    async def start(self) -> None:
        """Read the topic's partitions (fixed: ``ensure_topics`` checked their number)."""
        self._partitions = sorted(await self.producer.partitions_for(self.topic))

    def partition_of(self, key: bytes) -> int:
        """The partition aiokafka's default partitioner gives ``key`` on the key-events topic."""
        partitions = self._partitions
        return int(self._partitioner(key, partitions, partitions))

    async def submit(self, changes: Sequence[KeyChange], rejects: Sequence[Reject]) -> Awaitable[Any]:
        """Queue the records of one Pulsar batch: changes batched per partition, dead letters one by one.

        Returns:
            An awaitable that resolves once Kafka acknowledged every record, and raises the first
            error if it refused any.
        """
        if not self._partitions:
            await self.start()
        producer, topic = self.producer, self.topic
        groups: dict[int, list[tuple[bytes, bytes]]] = {}
        partition_of = self.partition_of
        for change in changes:
            key = change.key.encode("utf-8")
            groups.setdefault(partition_of(key), []).append((key, encode_change(change)))
        futures: list[Awaitable[Any]] = []
        for partition, records in groups.items():
            batch = producer.create_batch()
            for key, value in records:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None) is None:  # larger than a batch
                        futures.append(await producer.send(topic, value=value, key=key, partition=partition))
                        batch = producer.create_batch()
            if batch.record_count():
                futures.append(await producer.send_batch(batch, topic, partition=partition))
        for payload, error, source in rejects:
            record = dead_letter_record(payload, error, stage=self.stage, source=source)
            futures.append(await producer.send(self.dead_letter_topic, value=record))
        return asyncio.gather(*futures)
