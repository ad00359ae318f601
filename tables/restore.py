"""Bulk changelog restore for RocksDB tables: one aiokafka consumer, one RocksDB write batch per fetch.

Faust's recovery hands every changelog record, one at a time, through its consumer thread, the
conductor, a queue and the recovery loop (``asyncio.wait_for`` per record, the remaining-offset
counters rebuilt per record): about 6,000 records/s on 2 cores, and the store's own
``apply_changelog_batch`` (already one write batch per partition) is ~3 % of that profile
(BENCHMARKS.md). :class:`BulkRecovery` catches every active changelog partition up to its highwater
*before* Faust's loop starts: it reads with its own consumer (``getmany``, large fetches) and writes
each fetch as one RocksDB write batch that carries the rows and the store's persisted offset
together, so a crash in the middle leaves a partition whose offset matches its rows and the next
start goes on from there. Faust then finds nothing left to read for those partitions and goes on as
usual: standby partitions and tables this does not apply to take Faust's own path.

The rows are the changelog's bytes, as Faust's ``Store.apply_changelog_batch`` writes them (a null
value deletes the key). Installed with ``faust.App(..., TableManager=BulkTableManager)``.
"""

from __future__ import annotations

import logging
from collections import Counter
from time import monotonic
from typing import Any

import rocksdict
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.stores.rocksdb import Store as RocksStore
from faust.tables.base import Collection
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list
from faust.types import TP

log = logging.getLogger(__name__)

FETCH_PARTITION_BYTES = 16 * 1024 * 1024
FETCH_TOTAL_BYTES = 64 * 1024 * 1024
# Faust wraps ``_build_offsets`` in ``broker_request_timeout``, and a timeout there stops its
# recovery service for good; a round of catch-up ends this long before it, and the next round goes on.
ROUND_MARGIN_S = 20.0


def bulk_restorable(table: Any) -> bool:
    """True when restoring ``table`` by write batches does exactly what Faust's path would do.

    That is: Faust's RocksDB store driven by rocksdict, with the table's and the store's
    ``apply_changelog_batch`` not overridden and no per-event changelog callback.
    """
    store = getattr(table, "data", None)
    return (isinstance(store, RocksStore) and store.use_rocksdict
            and type(store).apply_changelog_batch is RocksStore.apply_changelog_batch
            and type(table).apply_changelog_batch is Collection.apply_changelog_batch
            and getattr(table, "_on_changelog_event", None) is None)


class BulkRecovery(Recovery):  # type: ignore[misc]
    """Faust's recovery service with the active partitions caught up in bulk first."""

    async def _build_offsets(self, consumer: Any, tps: set[TP], destination: Counter[TP], title: str) -> None:
        await super()._build_offsets(consumer, tps, destination, title)
        if title != "active" or not tps:
            return
        tables: dict[TP, Any] = {tp: self.tp_to_table[tp] for tp in tps if tp in self.tp_to_table}
        work = {tp: table.data for tp, table in tables.items() if bulk_restorable(table)}
        budget = max(1.0, float(self.app.conf.broker_request_timeout) - ROUND_MARGIN_S)
        finished = await catch_up(self.app, work, destination, self.active_highwaters, budget)
        if not finished:
            # Out of time in this round: ask Faust to start recovery again, as after a rebalance;
            # its next round reads the offsets persisted so far and this goes on from there.
            self.signal_recovery_start.set()


class BulkTableManager(TableManager):  # type: ignore[misc]
    """Faust's table manager with :class:`BulkRecovery` as its recovery service."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = BulkRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


def _last(offsets: Counter[TP], tp: TP) -> int:
    offset = offsets.get(tp)
    return -1 if offset is None or offset < 0 else int(offset)


def _consumer(app: Any) -> AIOKafkaConsumer:
    conf = app.conf
    return AIOKafkaConsumer(
        bootstrap_servers=server_list(conf.broker, 9092),
        client_id=f"{conf.broker_client_id}-restore",
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=max(FETCH_PARTITION_BYTES, conf.consumer_max_fetch_size),
        fetch_max_bytes=FETCH_TOTAL_BYTES,
        fetch_max_wait_ms=100,
        request_timeout_ms=int(conf.broker_request_timeout * 1000.0),
        check_crcs=conf.broker_check_crcs,
        # as Faust's own consumer reads (read_committed only under exactly-once)
        isolation_level="read_committed" if app.in_transaction else "read_uncommitted",
        **credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
    )


async def catch_up(app: Any, stores: dict[TP, RocksStore], offsets: Counter[TP], highwaters: Counter[TP],
                   budget_s: float) -> bool:
    """Apply changelog records to local RocksDB partitions until each reaches its highwater.

    Args:
        app: the Faust app (broker, credentials and client settings are taken from its conf).
        stores: changelog partition → the RocksDB store of its table.
        offsets: changelog partition → last offset applied (-1: none); advanced as records are written.
        highwaters: changelog partition → last offset in the changelog (end offset - 1; -1: empty).
        budget_s: seconds after which no new fetch is started.

    Returns:
        True when every partition reached its highwater; False when ``budget_s`` ran out first.
    """
    pending = {tp: store for tp, store in stores.items()
               if highwaters.get(tp) is not None and _last(offsets, tp) < highwaters[tp]}
    if not pending:
        return True
    t0 = monotonic()
    applied = 0
    total = sum(highwaters[tp] - _last(offsets, tp) for tp in pending)
    log.info("bulk restore of %d changelog partitions: up to %d records", len(pending), total)
    consumer = _consumer(app)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(tp.topic, tp.partition) for tp in pending])
        for tp in pending:
            consumer.seek(TopicPartition(tp.topic, tp.partition), _last(offsets, tp) + 1)
        while pending:
            fetched = await consumer.getmany(timeout_ms=500)
            for ktp, records in fetched.items():
                tp = TP(ktp.topic, ktp.partition)
                store = pending.get(tp)
                if store is None or not records:
                    continue
                batch = rocksdict.WriteBatch(raw_mode=True)
                for record in records:
                    if record.value is None:
                        batch.delete(record.key)
                    else:
                        batch.put(record.key, record.value)
                last = records[-1].offset
                batch.put(store.offset_key, str(last).encode())  # rows and offset in one atomic write
                store._db_for_partition(tp.partition).write(batch)
                offsets[tp] = last
                applied += len(records)
            for tp in list(pending):
                if offsets[tp] >= highwaters[tp]:
                    del pending[tp]
                elif not fetched.get(TopicPartition(tp.topic, tp.partition)) and \
                        await consumer.position(TopicPartition(tp.topic, tp.partition)) > highwaters[tp]:
                    # Read to the end, but the highwater is no record (a transaction marker): mark
                    # the partition read up to it, as Faust's recovery does for aborted transactions.
                    store = pending.pop(tp)
                    store._db_for_partition(tp.partition).put(store.offset_key, str(highwaters[tp]).encode())
                    offsets[tp] = highwaters[tp]
            if pending and monotonic() - t0 > budget_s:  # checked after a fetch: every round progresses
                log.warning("bulk restore: %d records in %.1f s, %d partitions not caught up yet; going on in the "
                            "next round", applied, monotonic() - t0, len(pending))
                return False
    finally:
        await consumer.stop()
    elapsed = monotonic() - t0
    log.info("bulk restore: %d records in %.2f s (%.0f records/s)", applied, elapsed,
             applied / elapsed if elapsed > 0 else 0.0)
    return True
