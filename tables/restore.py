"""Bulk changelog restore for RocksDB tables: raw Fetch requests, one RocksDB write batch per fetch.

Faust's recovery hands every changelog record, one at a time, through its consumer thread, the
conductor, a queue and the recovery loop (``asyncio.wait_for`` per record, the remaining-offset
counters rebuilt per record): about 6,000 records/s on 2 cores, and the store's own
``apply_changelog_batch`` (already one write batch per partition) is ~3 % of that profile
(BENCHMARKS.md). :class:`BulkRecovery` catches every active changelog partition up to its highwater
*before* Faust's loop starts: it reads with its own Kafka client (Fetch requests of up to 64 MB,
whose record batches are iterated as they are, without a ``ConsumerRecord`` per record) and writes
each partition's part of a fetch as one RocksDB write batch carrying the rows and the persisted offset
together, so a crash in the middle leaves a partition whose offset matches its rows and the next
start goes on from there. Faust then finds nothing left to read for those partitions and goes on as
usual: standby partitions and tables this does not apply to take Faust's own path.

The rows are the changelog's bytes, as Faust's ``Store.apply_changelog_batch`` writes them (a null
value deletes the key). Installed with ``faust.App(..., TableManager=BulkTableManager)``. Faust's
and aiokafka's internals are reached through :mod:`~vsync_stream.bridges.faust_seam`,
:mod:`~vsync_stream.bridges.aiokafka_seam` and :mod:`~vsync_stream.bridges.mode_seam`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from time import monotonic
from typing import Any

import rocksdict
from aiokafka import errors as Errors
from faust.types import TP

from vsync_stream.bridges import aiokafka_seam, faust_seam, mode_seam
from vsync_stream.bridges.aiokafka_seam import AIOKafkaClient
from vsync_stream.bridges.faust_seam import Collection, RocksStore
from vsync_stream.bridges.mode_seam import ThrowableQueue

log = logging.getLogger(__name__)

FETCH_PARTITION_BYTES = 16 * 1024 * 1024
FETCH_TOTAL_BYTES = 64 * 1024 * 1024
FETCH_WAIT_MS = 100
RETRY_BACKOFF_S = 0.5
# The Fetch requests read committed (aiokafka_seam.READ_COMMITTED): the changelog writers are
# transactional (tables/fence.py), and records of a fenced or aborted transaction are skipped.
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
            and faust_seam.changelog_event_callback(table) is None)


class BulkRecovery(faust_seam.Recovery):
    """Faust's recovery service with the active partitions caught up in bulk first."""

    async def on_active_offsets(self, tps: set[TP], destination: Counter[TP]) -> None:
        if not tps:
            return
        tables: dict[TP, Any] = {tp: self.tp_to_table[tp] for tp in tps if tp in self.tp_to_table}
        work = {tp: table.data for tp, table in tables.items() if bulk_restorable(table)}
        if self.app.in_transaction:
            work = {}  # exactly-once: records of aborted transactions must be skipped, as Faust's path does
        budget = max(1.0, float(self.app.conf.broker_request_timeout) - ROUND_MARGIN_S)
        finished = await catch_up(self.app, work, destination, self.active_highwaters, budget)
        if not finished:
            # Out of time in this round: ask Faust to start recovery again, as after a rebalance;
            # its next round reads the offsets persisted so far and this goes on from there.
            self.signal_recovery_start.set()


class ChangelogQueue(ThrowableQueue):  # type: ignore[misc]
    """Faust's changelog queue, not emptied when the flow resumes — only when a rebalance starts.

    Faust creates the queue of changelog events with ``clear_on_resume``, and its recovery resumes
    the flow several times within one group generation (before reading the active changelogs and
    when it is done). Each resume dropped the standby changelog records already fetched but not yet
    applied, while the consumer's position stayed past them, so a standby partition could lose
    records for good — and so could the active partition it later became, restored from that
    standby's persisted offset (a break-it run: one entry missing from one worker's partition, the
    changelog right). Events queued within a generation are for its own assignment and are applied
    in order by Faust's recovery loop, which skips what it already saw; at the start of a rebalance
    the flow is suspended first, and that clear still empties the queue as before.
    """

    def clear(self) -> None:
        if mode_seam.queue_flow_control(self).is_active():  # called by FlowControlEvent.resume()
            return
        super().clear()


class BulkTableManager(faust_seam.TableManager):
    """Faust's table manager with :class:`BulkRecovery` as its recovery service and a
    :class:`ChangelogQueue` that keeps standby records across flow resumes."""

    recovery_class = BulkRecovery
    changelog_queue_class = ChangelogQueue


def _last(offsets: Counter[TP], tp: TP) -> int:
    offset = offsets.get(tp)
    return -1 if offset is None or offset < 0 else int(offset)


def _client(app: Any) -> AIOKafkaClient:
    conf = app.conf
    return aiokafka_seam.raw_client(
        bootstrap_servers=faust_seam.server_list(conf.broker, 9092),
        client_id=f"{conf.broker_client_id}-restore",
        request_timeout_ms=int(conf.broker_request_timeout * 1000.0),
        **faust_seam.credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
    )


# A partition this restore leaves to Faust's own path (e.g. its offset is out of the log's range).
_Unfetchable = aiokafka_seam.Unfetchable


async def _fetch(client: AIOKafkaClient, positions: dict[TP, int]) -> dict[TP, tuple[list[Any], int]]:
    """One Fetch request per leader for ``positions``; each partition's record batches (data, not control).

    The raw batches of the response are handed back as they are (``DefaultRecordBatch``: records
    with ``offset``, ``key``, ``value``), without the per-record ``ConsumerRecord`` objects an
    ``AIOKafkaConsumer`` builds: those were about half of the restore's profile (BENCHMARKS.md).

    Raises:
        _Unfetchable: (carrying the partition) Kafka refused a partition for a reason a retry does
            not cure, e.g. OFFSET_OUT_OF_RANGE.
    """
    return await aiokafka_seam.fetch_record_batches(client, positions, partition_bytes=FETCH_PARTITION_BYTES,
                                                    total_bytes=FETCH_TOTAL_BYTES, wait_ms=FETCH_WAIT_MS)



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
    client = _client(app)
    try:
        await client.bootstrap()
        await client.set_topics(sorted({tp.topic for tp in pending}))
    except Errors.KafkaError as exc:  # Kafka unreachable: this round gives up, Faust's next one retries
        log.warning("bulk restore: cannot reach Kafka (%s: %s); retrying in the next round", type(exc).__name__, exc)
        await client.close()
        await asyncio.sleep(RETRY_BACKOFF_S)
        return False
    try:
        positions = {tp: _last(offsets, tp) + 1 for tp in pending}
        while pending:
            try:
                fetched = await _fetch(client, {tp: positions[tp] for tp in pending})
            except _Unfetchable as exc:
                tp, reason = exc.args
                log.warning("bulk restore: changelog partition %s[%d] refused (%s); Faust's recovery restores it",
                            tp.topic, tp.partition, reason)
                del pending[tp]
                continue
            except Errors.KafkaError as exc:  # connection lost, broker restarting: retried within the budget
                log.warning("bulk restore: fetch failed (%s: %s); retrying", type(exc).__name__, exc)
                fetched = {}
                await asyncio.sleep(RETRY_BACKOFF_S)
                client.force_metadata_update()
            for tp, (batches, end) in fetched.items():
                store = pending.get(tp)
                if store is None:
                    continue
                position = positions[tp]
                positions[tp] = max(position, end)  # past skipped batches (aborted, markers) too
                batch = rocksdict.WriteBatch(raw_mode=True)
                last = -1
                for record_batch in batches:
                    for record in record_batch:
                        offset = record.offset
                        if offset < position:
                            continue  # the start of the first batch, before the position asked for
                        value = record.value
                        if value is None:
                            batch.delete(record.key)
                        else:
                            batch.put(record.key, value)
                        last = offset
                        applied += 1
                    positions[tp] = max(positions[tp], record_batch.next_offset)
                if last >= 0:
                    batch.put(store.offset_key, str(last).encode())  # rows and offset in one atomic write
                    faust_seam.partition_db(store, tp.partition).write(batch)
                    offsets[tp] = last
            for tp in list(pending):
                if offsets[tp] >= highwaters[tp]:
                    del pending[tp]
                elif positions[tp] > highwaters[tp]:
                    # Read to the end, but the highwater is no record (a transaction marker, or
                    # removed by compaction): mark the partition read up to it, as Faust's recovery
                    # does for aborted transactions.
                    store = pending.pop(tp)
                    faust_seam.partition_db(store, tp.partition).put(store.offset_key, str(highwaters[tp]).encode())
                    offsets[tp] = highwaters[tp]
            if pending and monotonic() - t0 > budget_s:  # checked after a fetch: every round progresses
                log.warning("bulk restore: %d records in %.1f s, %d partitions not caught up yet; going on in the "
                            "next round", applied, monotonic() - t0, len(pending))
                return False
    finally:
        await client.close()
    elapsed = monotonic() - t0
    log.info("bulk restore: %d records in %.2f s (%.0f records/s)", applied, elapsed,
             applied / elapsed if elapsed > 0 else 0.0)
    return True
