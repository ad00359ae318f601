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
value deletes the key). Installed with ``faust.App(..., TableManager=BulkTableManager)``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from time import monotonic
from typing import Any

import rocksdict
from aiokafka import TopicPartition
from aiokafka import errors as Errors
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.control_record import ABORT_MARKER, ControlRecord
from aiokafka.record.memory_records import MemoryRecords
from faust.stores.rocksdb import Store as RocksStore
from faust.tables.base import Collection
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list
from faust.types import TP
from mode.utils.queues import ThrowableQueue

log = logging.getLogger(__name__)

FETCH_PARTITION_BYTES = 16 * 1024 * 1024
FETCH_TOTAL_BYTES = 64 * 1024 * 1024
FETCH_WAIT_MS = 100
RETRY_BACKOFF_S = 0.5
# Isolation level of the Fetch request: committed records only, up to the last stable offset.
# The changelog writers are transactional (tables/fence.py): records of a fenced or aborted
# transaction are in the log and are skipped here as aiokafka's own fetcher skips them.
READ_COMMITTED = 1
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
        if self._flow_control.is_active():  # called by FlowControlEvent.resume()
            return
        super().clear()


class BulkTableManager(TableManager):  # type: ignore[misc]
    """Faust's table manager with :class:`BulkRecovery` as its recovery service and a
    :class:`ChangelogQueue` that keeps standby records across flow resumes."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = BulkRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery

    @property
    def changelog_queue(self) -> ThrowableQueue:
        if self._changelog_queue is None:
            self._changelog_queue = ChangelogQueue(maxsize=self.app.conf.stream_buffer_maxsize,
                                                   flow_control=self.app.flow_control, clear_on_resume=True)
        return self._changelog_queue


def _last(offsets: Counter[TP], tp: TP) -> int:
    offset = offsets.get(tp)
    return -1 if offset is None or offset < 0 else int(offset)


def _client(app: Any) -> AIOKafkaClient:
    conf = app.conf
    return AIOKafkaClient(
        bootstrap_servers=server_list(conf.broker, 9092),
        client_id=f"{conf.broker_client_id}-restore",
        request_timeout_ms=int(conf.broker_request_timeout * 1000.0),
        **credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
    )


class _Unfetchable(Exception):
    """A partition this restore leaves to Faust's own path (e.g. its offset is out of the log's range)."""


async def _fetch(client: AIOKafkaClient, positions: dict[TP, int]) -> dict[TP, tuple[list[Any], int]]:
    """One Fetch request per leader for ``positions``; each partition's record batches (data, not control).

    The raw batches of the response are handed back as they are (``DefaultRecordBatch``: records
    with ``offset``, ``key``, ``value``), without the per-record ``ConsumerRecord`` objects an
    ``AIOKafkaConsumer`` builds: those were about half of the restore's profile (BENCHMARKS.md).

    Raises:
        _Unfetchable: (carrying the partition) Kafka refused a partition for a reason a retry does
            not cure, e.g. OFFSET_OUT_OF_RANGE.
    """
    by_leader: dict[int, list[TP]] = {}
    for tp in positions:
        leader = client.cluster.leader_for_partition(TopicPartition(tp.topic, tp.partition))
        if leader is None or leader < 0:
            await client.force_metadata_update()
            return {}
        by_leader.setdefault(leader, []).append(tp)
    requests = []
    for leader, tps in by_leader.items():
        topics: dict[str, list[tuple[int, int, int]]] = {}
        for tp in tps:
            topics.setdefault(tp.topic, []).append((tp.partition, positions[tp], FETCH_PARTITION_BYTES))
        request = FetchRequest(FETCH_WAIT_MS, 1, FETCH_TOTAL_BYTES, READ_COMMITTED, list(topics.items()))
        requests.append(client.send(leader, request))
    fetched: dict[TP, tuple[list[Any], int]] = {}
    stale_metadata = False
    for response in await asyncio.gather(*requests):
        for topic, partitions in response.topics:
            for partition, error_code, _highwater, *data in partitions:
                tp = TP(topic, partition)
                error = Errors.for_code(error_code)
                if error is Errors.NoError:
                    fetched[tp] = committed_batches(MemoryRecords(data[-1]), _aborted(response.API_VERSION, data))
                elif getattr(error, "invalid_metadata", False) or error.retriable:
                    stale_metadata = True  # leader moved, broker restarting: ask again after a refresh
                else:
                    raise _Unfetchable(tp, error.__name__)
    if stale_metadata:
        await client.force_metadata_update()
    return fetched


def _aborted(api_version: int, data: list[Any]) -> list[tuple[int, int]]:
    """The aborted transactions ``(producer id, first offset)`` of one partition of a Fetch response."""
    if api_version >= 11:  # [lso, log_start_offset, aborted_transactions, preferred_read_replica, records]
        aborted = data[2]
    elif api_version >= 4:  # [lso, (log_start_offset,) aborted_transactions, records]
        aborted = data[-2]
    else:
        aborted = None
    return [(int(pid), int(first)) for pid, first in aborted or ()]


def committed_batches(records: Any, aborted: list[tuple[int, int]]) -> tuple[list[Any], int]:
    """The data batches of a read_committed fetch, without those of aborted transactions.

    Kafka returns the records of aborted transactions with the list of them (KIP-98): a
    transactional batch of a producer is aborted from the aborted transaction's first offset up
    to that producer's abort marker. Control batches (commit and abort markers) are dropped.

    Args:
        records: aiokafka ``MemoryRecords`` of one partition.
        aborted: ``(producer id, first offset)`` of the aborted transactions in the response.

    Returns:
        The batches to apply, and the offset after the last batch of the response (skipped ones
        included: the position to fetch from next; -1 when there was none).
    """
    pending = sorted(aborted, key=lambda item: item[1])
    aborting: set[int] = set()
    batches = []
    end = -1
    while records.has_next():
        batch = records.next_batch()
        end = max(end, batch.next_offset)
        producer_id = batch.producer_id
        if producer_id is not None and producer_id >= 0:
            while pending and pending[0][1] <= batch.base_offset:
                aborting.add(pending.pop(0)[0])
            if batch.is_control_batch:
                control = next(iter(batch), None)
                if control is not None and ControlRecord.parse(control.key) == ABORT_MARKER:
                    aborting.discard(producer_id)
                continue
            if batch.is_transactional and producer_id in aborting:
                continue
        if not batch.is_control_batch:
            batches.append(batch)
    return batches, end


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
                    store._db_for_partition(tp.partition).write(batch)
                    offsets[tp] = last
            for tp in list(pending):
                if offsets[tp] >= highwaters[tp]:
                    del pending[tp]
                elif positions[tp] > highwaters[tp]:
                    # Read to the end, but the highwater is no record (a transaction marker, or
                    # removed by compaction): mark the partition read up to it, as Faust's recovery
                    # does for aborted transactions.
                    store = pending.pop(tp)
                    store._db_for_partition(tp.partition).put(store.offset_key, str(highwaters[tp]).encode())
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
