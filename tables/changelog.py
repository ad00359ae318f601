"""A table partition's changelog records produced as whole Kafka record batches (aiokafka's batch API).

Faust's ``Collection.send_changelog`` costs, per record, a ``FutureMessage``, a trip through the
producer buffer task, ``Topic.publish_message``, ``Producer.send`` and the accumulator, and on every
acknowledgement a RocksDB put of the persisted offset: about a quarter of the fold's profile
(BENCHMARKS.md). Here the records of one fold batch are appended to aiokafka ``BatchBuilder``\\ s of
Faust's own producer and sent with one ``send_batch`` per builder; when Kafka acknowledges a
builder, the store's persisted changelog offset is set once, to its last record — what Faust's
``_on_changelog_sent`` does per record. Records, keys and partitions are those Faust would send.

Faust's commit flushes this same aiokafka producer before committing source offsets, so a source
offset is never committed ahead of the changelog records of its events.

When the table has fenced writers (``tables/fence.py``, the default: ``VSYNC_CHANGELOG_FENCING``),
a fold batch's records are one Kafka transaction of the partition's own transactional producer,
committed before the call returns; a writer fenced by a newer owner stops the worker (exit 70).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, NoReturn

from faust.types import TP

from vsync_stream.bridges import faust_seam

log = logging.getLogger(__name__)

EXIT_CHANGELOG_FAILED = 70  # EX_SOFTWARE, as the fold: the supervisor restarts the worker, events replay


async def produce_changelog(table: Any, partition: int, items: dict[bytes, bytes]) -> None:
    """Produce one changelog record per item to ``partition`` of ``table``'s changelog topic.

    Returns once every record is handed to the producer's sender (not yet acknowledged); the
    persisted offset follows each acknowledgement. A failed delivery stops the worker at once
    (exit 70) before Faust can commit the source offsets of those events, so they are replayed.

    Args:
        table: the Faust table (RocksDB store) whose rows were written.
        partition: the table partition, which is also the changelog partition.
        items: raw key → raw value, in the order they must appear in the changelog.

    Raises:
        aiokafka.errors.KafkaError: the producer could not take the batch (e.g. timed out).
    """
    app = table.app
    writers = getattr(table, "writers", None)
    if writers is not None:
        await _produce_fenced(table, writers, partition, items)
        return
    if app.in_transaction or app.conf.producer_threaded:
        # Faust's per-record path: its transaction manager tracks the offsets there.
        for key, value in items.items():
            table.send_changelog(partition, key, value, key_serializer="raw", value_serializer="raw")
        return
    client = faust_seam.aiokafka_producer(app)  # the aiokafka producer of Faust's aiokafka driver
    topic = table.changelog_topic.get_topic_name()
    builder = client.create_batch()
    for key, value in items.items():
        if builder.append(timestamp=None, key=key, value=value) is None:  # builder full
            await _send(table, client, builder, topic, partition)
            builder = client.create_batch()
            if builder.append(timestamp=None, key=key, value=value) is None:
                raise ValueError(f"a changelog record of {len(key) + len(value)} bytes exceeds the producer's "
                                 "batch size (producer_max_batch_size)")
    if builder.record_count():
        await _send(table, client, builder, topic, partition)


async def _send(table: Any, client: Any, builder: Any, topic: str, partition: int) -> None:
    count = builder.record_count()
    delivery: asyncio.Future[Any] = await client.send_batch(builder, topic, partition=partition)
    tp = TP(topic, partition)

    def delivered(fut: asyncio.Future[Any]) -> None:
        exc = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
        if exc is not None:
            log.critical("changelog batch of %d records to %s[%d] was not delivered (%s: %s); stopping the worker "
                         "without committing (the events are replayed on restart)", count, topic, partition,
                         type(exc).__name__, exc)
            logging.shutdown()
            os._exit(EXIT_CHANGELOG_FAILED)
        table.data.set_persisted_offset(tp, fut.result().offset + count - 1)

    delivery.add_done_callback(delivered)


async def _produce_fenced(table: Any, writers: Any, partition: int, items: dict[bytes, bytes]) -> None:
    """Produce ``items`` as one transaction of the partition's fenced writer and wait for its commit.

    A partition this worker holds no writer for (given away in a rebalance it has not seen yet,
    or never owned) is not written: the worker stops, as for a fenced writer.
    """
    topic = table.changelog_topic.get_topic_name()
    held = writers.writer(partition)
    if held is None:
        _stop(f"no changelog writer for partition {partition} of {topic}: the partition was given to another "
              "worker", len(items))
    producer, lock = held
    deliveries: list[tuple[asyncio.Future[Any], int]] = []
    try:
        async with lock:
            await producer.begin_transaction()
            builder = producer.create_batch()
            for key, value in items.items():
                if builder.append(timestamp=None, key=key, value=value) is None:  # builder full
                    deliveries.append((await producer.send_batch(builder, topic, partition=partition),
                                       builder.record_count()))
                    builder = producer.create_batch()
                    if builder.append(timestamp=None, key=key, value=value) is None:
                        raise ValueError(f"a changelog record of {len(key) + len(value)} bytes exceeds the "
                                         "producer's batch size (producer_max_batch_size)")
            if builder.record_count():
                deliveries.append((await producer.send_batch(builder, topic, partition=partition),
                                   builder.record_count()))
            await producer.commit_transaction()
            last = -1
            for delivery, count in deliveries:
                last = max(last, (await delivery).offset + count - 1)
    except (ValueError, asyncio.CancelledError):
        raise
    except Exception as exc:  # fenced (ProducerFenced, InvalidProducerEpoch) or Kafka failed the commit
        _stop(f"changelog transaction of {len(items)} records to {topic}[{partition}] failed "
              f"({type(exc).__name__}: {exc}); a newer owner may have fenced this worker", len(items))
    if last >= 0:
        table.data.set_persisted_offset(TP(topic, partition), last)


def _stop(why: str, count: int) -> NoReturn:
    log.critical("%s; stopping the worker without committing the %d records' events (they are replayed by the "
                 "partition's owner)", why, count)
    logging.shutdown()
    os._exit(EXIT_CHANGELOG_FAILED)
