"""The seam to aiokafka's private parts: raw Fetch requests for the bulk changelog restore.

``tables/restore.py`` reads changelog partitions with aiokafka's internal client
(``aiokafka.client.AIOKafkaClient``), one Fetch request per leader, and iterates the record
batches of the response as they are (``aiokafka.record.memory_records.MemoryRecords``), without
the ``ConsumerRecord`` per record that the public ``AIOKafkaConsumer`` builds: those were about
half of the restore's profile (BENCHMARKS.md), so the public consumer does not serve here. Every
other use of aiokafka in the package is its public API (producer, consumer, admin client, errors,
structs). aiokafka 0.12 rebuilt its protocol classes (``FetchRequest`` became a builder taking
``max_wait_time, min_bytes, max_bytes, isolation_level, topics``): ``tests/unit/test_seams.py``
checks the installed aiokafka against :data:`CONTRACT` and names what is missing.
Tested with :data:`TESTED_WITH` (pinned in ``pyproject.toml``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition
from aiokafka import errors as Errors
from aiokafka.client import AIOKafkaClient
from aiokafka.cluster import ClusterMetadata
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.control_record import ABORT_MARKER, ControlRecord
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.record.memory_records import MemoryRecords
from faust.types import TP

__all__ = ["CONTRACT", "TESTED_WITH", "AIOKafkaClient", "Unfetchable", "committed_batches", "fetch_record_batches",
           "raw_client", "set_read_committed"]

TESTED_WITH = "aiokafka==0.14.0"

# Isolation level of the Fetch request: committed records only, up to the last stable offset. The
# changelog writers are transactional (tables/fence.py): records of a fenced or aborted transaction
# are in the log and are skipped here as aiokafka's own fetcher skips them.
READ_COMMITTED = 1

# (object, attribute or method of aiokafka's internals, its parameter names or None): see
# tests/unit/test_seams.py.
CONTRACT: list[tuple[Any, str, tuple[str, ...] | None]] = [
    (AIOKafkaClient, "__init__", None),
    (AIOKafkaClient, "bootstrap", ("self",)),
    (AIOKafkaClient, "set_topics", ("self", "topics")),
    (AIOKafkaClient, "force_metadata_update", ("self",)),
    (AIOKafkaClient, "send", ("self", "node_id", "request", "group")),
    (AIOKafkaClient, "close", ("self",)),
    (ClusterMetadata, "leader_for_partition", ("self", "partition")),
    (FetchRequest, "__init__", ("self", "max_wait_time", "min_bytes", "max_bytes", "isolation_level", "topics",
                                "rack_id")),
    # C extensions (aiokafka's _crecords): presence only, behaviour checked by the test on a real batch
    (MemoryRecords, "has_next", None),
    (MemoryRecords, "next_batch", None),
    (DefaultRecordBatch, "is_control_batch", None),
    (DefaultRecordBatch, "next_offset", None),
    (Errors, "for_code", ("error_code",)),
    (ControlRecord, "parse", None),
    (DefaultRecordBatch, "is_transactional", None),
    (DefaultRecordBatch, "producer_id", None),
    (DefaultRecordBatch, "base_offset", None),
]


def set_read_committed(consumer: Any) -> None:
    """Make an ``AIOKafkaConsumer`` not yet started read committed records only.

    aiokafka passes ``_isolation_level`` to its Fetcher at ``start()``; Faust builds the consumer
    without the option (it sets it only for ``processing_guarantee="exactly_once"``).
    """
    consumer._isolation_level = "read_committed"


class Unfetchable(Exception):
    """A partition Kafka refused for a reason a retry does not cure (args: the partition, the error name)."""


def raw_client(bootstrap_servers: list[str], client_id: str, request_timeout_ms: int, **auth: Any) -> AIOKafkaClient:
    """aiokafka's internal client (not started: ``await client.bootstrap()``, then ``close()``).

    Args:
        bootstrap_servers: ``host:port`` strings.
        client_id: the Kafka client id.
        request_timeout_ms: per request, milliseconds.
        auth: security keyword arguments of aiokafka's clients (``security_protocol``, ``ssl_context``, SASL).
    """
    return AIOKafkaClient(bootstrap_servers=bootstrap_servers, client_id=client_id,
                          request_timeout_ms=request_timeout_ms, **auth)


async def fetch_record_batches(client: AIOKafkaClient, positions: dict[TP, int], *, partition_bytes: int,
                               total_bytes: int, wait_ms: int) -> dict[TP, tuple[list[Any], int]]:
    """One Fetch request per leader for ``positions``; each partition's record batches (data, not control).

    The raw batches of the response are handed back as they are (``DefaultRecordBatch``: iterating
    one yields records with ``offset``, ``key``, ``value``; ``next_offset`` is the offset after it).
    Read committed: the batches of aborted transactions and the control batches are skipped, and
    each partition's answer carries the offset after the last batch of the response (skipped ones
    included: the position to fetch from next; -1 when there was none). An empty answer when a
    leader is unknown or moved: metadata is refreshed, ask
    again.

    Args:
        client: a bootstrapped client whose topics include the partitions' topics.
        positions: partition → first offset wanted.
        partition_bytes: most bytes fetched per partition.
        total_bytes: most bytes per response.
        wait_ms: longest wait of the broker for data, milliseconds.

    Raises:
        Unfetchable: (carrying the partition) Kafka refused a partition for a reason a retry does
            not cure, e.g. OFFSET_OUT_OF_RANGE.
        aiokafka.errors.KafkaError: the request failed (connection lost, broker restarting).
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
            topics.setdefault(tp.topic, []).append((tp.partition, positions[tp], partition_bytes))
        request = FetchRequest(wait_ms, 1, total_bytes, READ_COMMITTED, list(topics.items()))
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
                    raise Unfetchable(tp, error.__name__)
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
