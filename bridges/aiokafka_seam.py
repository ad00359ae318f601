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
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.record.memory_records import MemoryRecords
from faust.types import TP

__all__ = ["CONTRACT", "TESTED_WITH", "AIOKafkaClient", "Unfetchable", "fetch_record_batches", "raw_client"]

TESTED_WITH = "aiokafka==0.14.0"

READ_UNCOMMITTED = 0  # isolation level of a Fetch request

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
]


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
                               total_bytes: int, wait_ms: int) -> dict[TP, list[Any]]:
    """One Fetch request per leader for ``positions``; each partition's record batches (data, not control).

    The raw batches of the response are handed back as they are (``DefaultRecordBatch``: iterating
    one yields records with ``offset``, ``key``, ``value``; ``next_offset`` is the offset after it).
    Read uncommitted. An empty answer when a leader is unknown or moved: metadata is refreshed, ask
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
        request = FetchRequest(wait_ms, 1, total_bytes, READ_UNCOMMITTED, list(topics.items()))
        requests.append(client.send(leader, request))
    fetched: dict[TP, list[Any]] = {}
    stale_metadata = False
    for response in await asyncio.gather(*requests):
        for topic, partitions in response.topics:
            for partition, error_code, _highwater, *data in partitions:
                tp = TP(topic, partition)
                error = Errors.for_code(error_code)
                if error is Errors.NoError:
                    records = MemoryRecords(data[-1])
                    batches = []
                    while records.has_next():
                        batch = records.next_batch()
                        if not batch.is_control_batch:
                            batches.append(batch)
                    fetched[tp] = batches
                elif getattr(error, "invalid_metadata", False) or error.retriable:
                    stale_metadata = True  # leader moved, broker restarting: ask again after a refresh
                else:
                    raise Unfetchable(tp, error.__name__)
    if stale_metadata:
        await client.force_metadata_update()
    return fetched
