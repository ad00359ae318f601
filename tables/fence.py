"""Fenced changelog writers: one Kafka transactional producer per active changelog partition.

A worker that misses a rebalance (SIGSTOPped, or blocked past its session timeout) still believes
it owns its partitions; when it runs again it can write changelog rows and the source-offset marker
after the new owner wrote newer ones, and compaction keeps the zombie's last value (issue #14,
item 4). An owner epoch stamped in the records cannot undo that once compaction has deleted the
new owner's earlier record of the same key; Kafka transactions make the zombie's writes impossible
instead:

* every changelog partition ``p`` has the transactional id ``{app id}-{table}-changelog-{p}``;
* a worker that becomes the active owner of ``p`` starts a producer with that id **before** the
  partition's changelog is restored: ``InitProducerId`` bumps the producer epoch and aborts any
  transaction the previous owner left open, so every later send or commit of the previous owner
  fails with ``ProducerFenced``/``InvalidProducerEpoch`` (KIP-98);
* each fold batch's changelog records (rows and the source-offset marker) are one transaction,
  committed before the batch's source offsets are acknowledged;
* restores and standbys read ``read_committed`` (``tables/restore.py``, ``bridges/kafka_batches.py``),
  so records of an aborted transaction are never applied.

A fenced writer stops the worker at once (exit 70, as for any failed changelog write): it is no
longer the owner, its local rows for that partition are superseded by the new owner's changelog,
and the supervisor restarts it into the group.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer

log = logging.getLogger(__name__)


def transactional_id(changelog_topic: str, partition: int) -> str:
    """The transactional id of one changelog partition's writer (stable across workers and restarts).

    Args:
        changelog_topic: ``{app id}-{table}-changelog`` (broker-visible names are schema).
        partition: the changelog partition, which is also the table and source partition.
    """
    return f"{changelog_topic}-{partition}"


class ChangelogWriters:
    """The transactional producers of the changelog partitions this worker actively owns.

    Args:
        changelog_topic: the changelog topic name.
        bootstrap: Kafka bootstrap servers, ``host:port[,host:port]``.
        client_kwargs: security keyword arguments for aiokafka (``KafkaSecurity.client_kwargs()``).
        transaction_timeout_ms: how long the coordinator keeps a transaction of a silent writer open
            before aborting it (milliseconds; a stopped owner holds the partition's LSO that long
            unless a new owner fences it first).
    """

    def __init__(self, changelog_topic: str, bootstrap: str, client_kwargs: dict[str, Any],
                 transaction_timeout_ms: int = 60_000, max_batch_size: int = 1024 * 1024) -> None:
        self.topic = changelog_topic
        self._bootstrap = bootstrap
        self._client_kwargs = client_kwargs
        self._timeout_ms = transaction_timeout_ms
        self._max_batch_size = max_batch_size
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    @property
    def partitions(self) -> set[int]:
        """The partitions this worker holds a writer for."""
        return set(self._producers)

    async def own(self, partitions: Iterable[int]) -> None:
        """Hold fresh writers for exactly ``partitions``: fence the previous owner of each, close the rest.

        Called on every rebalance. Every writer is initialised again, kept partitions included: a
        worker that was itself fenced while it missed a rebalance, and got a partition back, would
        otherwise keep a producer whose epoch is no longer the latest and fail at its next commit.
        Must complete before the partitions' changelogs are read for restore: a record the previous
        owner commits before the fence is then restored, and none can follow it.

        Raises:
            aiokafka.errors.KafkaError: a writer could not be initialised (Kafka unreachable).
        """
        wanted = set(partitions)
        gone = list(self._producers)
        await asyncio.gather(*(self._close(p) for p in gone))
        new = sorted(wanted)
        if not new:
            return
        started = await asyncio.gather(*(self._start(p) for p in new))
        self._producers.update(zip(new, started, strict=True))
        log.info("changelog writers: fenced previous owners of partitions %s (transactional ids %s-<p>)", new,
                 self.topic)

    async def _start(self, partition: int) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap, transactional_id=transactional_id(self.topic, partition),
            enable_idempotence=True, acks="all", transaction_timeout_ms=self._timeout_ms,
            max_batch_size=self._max_batch_size, linger_ms=0, **self._client_kwargs)
        await producer.start()  # InitProducerId: bumps the epoch, aborts the previous owner's open transaction
        return producer

    async def _close(self, partition: int) -> None:
        producer = self._producers.pop(partition)
        try:
            await producer.stop()
        except Exception as exc:  # closing a writer of a partition given away must not stop the rebalance
            log.warning("changelog writer of partition %d did not close cleanly (%s: %s)", partition,
                        type(exc).__name__, exc)

    def writer(self, partition: int) -> tuple[AIOKafkaProducer, asyncio.Lock] | None:
        """The producer of ``partition`` and the lock that keeps its transactions one at a time, or None."""
        producer = self._producers.get(partition)
        if producer is None:
            return None
        return producer, self._locks.setdefault(partition, asyncio.Lock())

    async def stop(self) -> None:
        """Close every writer (worker shutdown)."""
        await asyncio.gather(*(self._close(p) for p in list(self._producers)))
