"""The seam to faust-streaming's private parts: every private Faust name the product uses is used here.

The fold, the bulk restore and the batched changelog produce are fast because they reach past
Faust's public API (BENCHMARKS.md): the consumer's fetch loop and ack bookkeeping
(``bridges/kafka_batches.py``), the recovery service's offset building and the table manager's
services (``tables/restore.py``), the RocksDB store's per-partition databases
(``tables/entries.py``), the aiokafka producer under Faust's producer (``tables/changelog.py``) and
the CLI's command group (``vsync_stream/cli.py``). Those modules call the functions and base classes
here instead; nothing else in the package names a private Faust attribute or module
(``tests/unit/test_seams.py`` checks both that and that the installed Faust still has everything
listed in :data:`CONTRACT`, naming what is missing).

Tested with :data:`TESTED_WITH` (pinned in ``pyproject.toml``). Before moving the pin, run
``tests/unit/test_seams.py`` and the integration tests of the fold, restore, changelog and
recovery against the new version; a change in Faust's ack bookkeeping would otherwise stall or
skip commits silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import faust
from faust.cli import faust as _faust_commands  # noqa: F401  # puts Faust's commands on the group (as App.main)
from faust.cli.base import cli as faust_cli
from faust.stores.rocksdb import Store as RocksStore
from faust.tables.base import Collection
from faust.tables.manager import TableManager as _FaustTableManager
from faust.tables.recovery import Recovery as _FaustRecovery
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread as _FaustConsumerThread
from faust.transport.drivers.aiokafka import Consumer as _FaustAIOKafkaConsumer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.queues import ThrowableQueue

from vsync_stream.bridges import aiokafka_seam

__all__ = [
    "ACTIVE", "CONTRACT", "TESTED_WITH", "Collection", "Consumer", "Recovery", "RocksStore", "TableManager",
    "aiokafka_producer", "changelog_event_callback", "committed_offsets", "credentials_to_aiokafka_auth",
    "faust_cli", "hide_commands", "partition_db", "running_consumer", "server_list", "visible_items",
]

TESTED_WITH = "faust-streaming==0.15.3"

# The title Faust's recovery passes to ``Recovery._build_offsets`` for the active partitions
# (``"standby"`` for the others), after it built their highwaters (``faust/tables/recovery.py``).
ACTIVE = "active"

# What this module relies on: (object, private attribute or method, its parameters or None).
# tests/unit/test_seams.py checks each against the installed Faust; signatures are parameter names.
CONTRACT: list[tuple[Any, str, tuple[str, ...] | None]] = [
    (_FaustAIOKafkaConsumer, "_drain_messages", ("self", "fetcher")),
    (_FaustAIOKafkaConsumer, "_wait_next_records", ("self", "timeout")),
    (_FaustAIOKafkaConsumer, "_to_message", ("self", "tp", "record")),
    (_FaustAIOKafkaConsumer, "_add_gap", ("self", "tp", "offset_from", "offset_to")),
    (_FaustAIOKafkaConsumer, "wait_empty", ("self",)),
    (_FaustAIOKafkaConsumer, "perform_seek", ("self",)),
    (_FaustAIOKafkaConsumer, "_new_consumer_thread", ("self",)),
    (_FaustConsumerThread, "_create_worker_consumer", ("self", "transport")),
    # instance attributes set by Consumer.__init__ (checked on a consumer built by the test)
    (_FaustAIOKafkaConsumer, "_read_offset", None),
    (_FaustAIOKafkaConsumer, "_committed_offset", None),
    (_FaustAIOKafkaConsumer, "_acked", None),
    (_FaustAIOKafkaConsumer, "_acked_index", None),
    (_FaustAIOKafkaConsumer, "_n_acked", None),
    (_FaustAIOKafkaConsumer, "_commit_every", None),
    (_FaustAIOKafkaConsumer, "_buffered_partitions", None),
    (_FaustRecovery, "_build_offsets", ("self", "consumer", "tps", "destination", "title")),
    (_FaustTableManager, "_recovery", None),
    (_FaustTableManager, "_changelog_queue", None),
    (RocksStore, "_db_for_partition", ("self", "partition")),
    (RocksStore, "_visible_items", ("self", "db")),
    (Collection, "_on_changelog_event", None),
    (faust.App, "_consumer", None),
]


# -- the consumer: Faust's aiokafka consumer with its fetch loop and ack bookkeeping exposed ------
class _ReadCommittedConsumerThread(_FaustConsumerThread):  # type: ignore[misc]
    """Faust's aiokafka consumer thread whose consumer reads committed records only.

    The table changelogs are written in transactions (``tables/fence.py``): a standby, and Faust's
    own recovery path, must not apply the records of a fenced writer's aborted transaction. Faust
    reads ``read_committed`` only with ``processing_guarantee="exactly_once"``, which would also
    route every commit through its transaction manager; here only the isolation level changes
    (the key-events topic is not transactional, so it reads the same either way).
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        aiokafka_seam.set_read_committed(consumer)
        return consumer


class Consumer(_FaustAIOKafkaConsumer):  # type: ignore[misc]
    """Faust's aiokafka consumer whose fetch loop is :meth:`drain`, with its bookkeeping as methods.

    A subclass implements :meth:`drain` (Faust's ``_drain_messages``, the consumer's fetch loop
    run by Faust's ``Fetcher`` service) with the building blocks below, which do what Faust's own
    loop and ``Consumer.ack`` do.
    """

    fetching_flag = CONSUMER_FETCHING  # the diag flag Faust's loop sets while it fetches

    def _new_consumer_thread(self) -> Any:
        return _ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        await self.drain(lambda: bool(fetcher.should_stop))

    async def drain(self, fetcher_should_stop: Callable[[], bool]) -> None:
        """The fetch loop; runs until this consumer or ``fetcher_should_stop()`` stops."""
        raise NotImplementedError

    async def wait_next_records(self, timeout: float) -> tuple[Mapping[TP, list[Any]] | None, set[TP] | None]:
        """One fetch: (partition → aiokafka ``ConsumerRecord``\\ s, the active partitions or None)."""
        records, active = await self._wait_next_records(timeout=timeout)
        return records, active

    def buffered(self, tp: TP) -> bool:
        """True when Faust buffers ``tp`` (delivered although it is not an active partition)."""
        return tp in self._buffered_partitions

    def read_offset(self, tp: TP) -> int | None:
        """The last offset of ``tp`` delivered by the fetch loop (None: none yet)."""
        offset: int | None = self._read_offset[tp]
        return offset

    def set_read_offset(self, tp: TP, offset: int) -> None:
        """Record ``offset`` as the last offset of ``tp`` delivered."""
        self._read_offset[tp] = offset

    async def add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Tell Faust's commit that offsets ``offset_from``..``offset_to - 1`` hold no record to ack."""
        await self._add_gap(tp, offset_from, offset_to)

    def ack_offsets(self, tp: TP, offsets: Sequence[int]) -> None:
        """Faust's ``Consumer.ack`` for many offsets of one partition at once (under Faust's ``ack_lock``)."""
        with ack_lock:
            committed = self._committed_offset[tp]
            index = self._acked_index[tp]
            fresh = [o for o in offsets if (committed is None or o >= committed) and o not in index]
            index.update(fresh)
            self._acked[tp].extend(fresh)
            self._n_acked += len(fresh)

    async def commit_if_due(self) -> None:
        """Commit when ``broker_commit_every`` offsets were acknowledged since the last commit, as Faust does."""
        if self._commit_every is not None and self._n_acked >= self._commit_every:
            self._n_acked = 0
            await self.commit()

    def to_message(self, tp: TP, record: Any) -> Any:
        """Faust's ``Message`` of an aiokafka record (its per-message path)."""
        return self._to_message(tp, record)


# -- tables: the recovery service, the table manager and the RocksDB store ----------------------
class Recovery(_FaustRecovery):  # type: ignore[misc]
    """Faust's recovery service with a hook after the offsets of the active partitions are built."""

    async def _build_offsets(self, consumer: Any, tps: set[TP], destination: Counter[TP], title: str) -> None:
        await super()._build_offsets(consumer, tps, destination, title)
        if title == ACTIVE:
            await self.on_active_offsets(tps, destination)

    async def on_active_offsets(self, tps: set[TP], offsets: Counter[TP]) -> None:
        """Called once Faust built ``offsets`` (last offset applied, -1: none) of the active ``tps``;
        their highwaters are in ``self.active_highwaters``. Faust reads from ``offsets`` afterwards."""


class TableManager(_FaustTableManager):  # type: ignore[misc]
    """Faust's table manager whose recovery service and changelog queue classes are attributes."""

    recovery_class: type[_FaustRecovery] = _FaustRecovery
    changelog_queue_class: type[ThrowableQueue] = ThrowableQueue

    @property
    def recovery(self) -> _FaustRecovery:
        if self._recovery is None:
            self._recovery = self.recovery_class(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery

    @property
    def changelog_queue(self) -> ThrowableQueue:
        if self._changelog_queue is None:  # as Faust's app.FlowControlQueue(...)
            self._changelog_queue = self.changelog_queue_class(
                maxsize=self.app.conf.stream_buffer_maxsize, flow_control=self.app.flow_control,
                clear_on_resume=True)
        return self._changelog_queue


def partition_db(store: Any, partition: int) -> Any:
    """The rocksdict ``Rdict`` of one partition of Faust's RocksDB store (opened on first use)."""
    return store._db_for_partition(partition)


def visible_items(store: Any, db: Any) -> Iterator[tuple[bytes, bytes]]:
    """Raw ``(key, value)`` rows of ``db`` (from :func:`partition_db`) as Faust's store iterates them."""
    items: Iterator[tuple[bytes, bytes]] = store._visible_items(db)
    return items


def changelog_event_callback(table: Any) -> Any:
    """The table's ``on_changelog_event`` callback (None when the table has none)."""
    return getattr(table, "_on_changelog_event", None)


def aiokafka_producer(app: Any) -> Any:
    """The ``aiokafka.AIOKafkaProducer`` under the Faust app's producer (aiokafka driver, started).

    Raises:
        faust.exceptions.NotReady: the producer is not started yet.
    """
    return app.producer._ensure_producer()


def running_consumer(app: Any) -> Any:
    """The app's consumer if one was created (``app.consumer`` would create one), else None."""
    return getattr(app, "_consumer", None)


def committed_offsets(consumer: Any) -> Any:
    """The consumer's committed offsets (partition → next offset to read; None: no consumer).

    Read-only: the mapping Faust's commit updates, without a public getter.
    """
    return getattr(consumer, "_committed_offset", None)


def hide_commands(names: Sequence[str]) -> None:
    """Hide Faust's generic CLI commands ``names`` from ``--help`` (they still run when named)."""
    for name in names:
        command = faust_cli.commands.get(name)
        if command is not None:
            command.hidden = True
