"""The entries table: Pix key → :class:`EntryState`, changelog-backed in RocksDB (rocksdict).

Beside the RocksDB rows the table keeps, per active partition, a :class:`VSyncLedger` with the
XOR of that partition's active CIDs per (participant, key type). The ledger is derived state: it is
rebuilt from the partition's rows whenever recovery completes, updated by the fold for every
applied event, and can be recomputed and compared on demand (:meth:`EntriesTable.audit_ledgers`).
It is never restored from anywhere else, so it cannot drift from the table (invariant I1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
import rocksdict
from faust.types import TP

from vsync_stream.bridges import faust_seam
from vsync_stream.domain.fold import EntryState
from vsync_stream.domain.vsync import VSyncLedger
from vsync_stream.metrics import LEDGER_DRIFT
from vsync_stream.tables.changelog import produce_changelog
from vsync_stream.tables.fence import ChangelogWriters

log = logging.getLogger(__name__)


def pair_prefix(participant: str, key_type: str) -> bytes:
    """The first bytes of every encoded :class:`EntryState` of (participant, key type)."""
    return orjson.dumps([participant, key_type])[:-1] + b","


# The last key-events offset folded into a partition, kept in the partition itself (RocksDB and
# changelog, written last in every fold batch). Not a Pix key: every Pix key starts with a printable
# character. After a restore it says exactly which events the restored rows reflect, so the worker
# resumes there even when the consumer group committed further (see ``agents/fold.py``).
OFFSET_KEY = b"\x00source-offset"


def encode_offset(offset: int) -> bytes:
    """The stored form of a source offset (ASCII decimal)."""
    return str(offset).encode("ascii")


@dataclass(slots=True)
class PartitionState:
    """Derived state of one active partition: its ledger and the last source offset folded."""

    ledger: VSyncLedger = field(default_factory=VSyncLedger)
    offset: int | None = None


class EntriesTable(faust.Table):  # type: ignore[misc]
    """Faust table of entry states plus the per-partition VSync ledgers derived from it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.partition_states: dict[int, PartitionState] = {}
        self.recovering = True
        self.generation = -1  # consumer-group generation of the current assignment
        self.checks = 0  # ledger checks run (after recovery and on demand)
        self.drift_events = 0  # partitions found drifted, ever (each one repaired)
        self.last_drift: list[int] = []
        self.writers: ChangelogWriters | None = None  # fenced changelog writers (tables/fence.py), when enabled
        self.source_topic: str | None = None  # the key-events topic, whose partitions are this table's

    async def on_stop(self) -> None:
        """Close the changelog writers with the table."""
        await super().on_stop()
        if self.writers is not None:
            await self.writers.stop()

    # -- rebalance and recovery -------------------------------------------------------------
    async def on_rebalance(self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP],
                           generation_id: int = 0) -> None:
        """Drop the ledgers of revoked partitions; state is not served until recovery completes."""
        self.recovering = True
        self.generation = generation_id
        for tp in revoked:
            self.partition_states.pop(tp.partition, None)
        if self.writers is not None:
            # Before any changelog partition is restored: fencing the previous owner first means
            # every record it can still commit precedes what the restore reads (tables/fence.py).
            topics = self.changelog_topic.topics
            actives = {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic in topics}
            actives |= {tp.partition for tp in assigned if tp.topic == self.source_topic}
            await self.writers.own(actives)
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        """Rebuild the ledger of every active partition from its rows, then serve again."""
        await super().on_recovery_completed(active_tps, standby_tps)
        topics = self.changelog_topic.topics
        actives = sorted({tp.partition for tp in active_tps if tp.topic in topics}
                         | {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic in topics})
        rebuilt: dict[int, PartitionState] = {}
        drifted = []
        for partition in actives:
            previous = self.partition_states.get(partition)
            state = PartitionState(self.scan_partition(partition), self.source_offset(partition))
            if previous is not None and previous.ledger != state.ledger:
                drifted.append(partition)
            rebuilt[partition] = state
        self.partition_states = rebuilt
        self._report_drift(drifted)
        self.recovering = False
        log.info("entries table ready: %d active partitions, ledgers rebuilt from the table", len(rebuilt))

    # -- batched access for the fold ---------------------------------------------------------
    def source_offset(self, partition: int) -> int | None:
        """The last key-events offset folded into a local partition (None: nothing folded yet)."""
        raw = self.read(partition, OFFSET_KEY)
        return None if raw is None else int(raw)

    def read(self, partition: int, key: bytes) -> bytes | None:
        """The stored value of ``key`` in a local partition (raw bytes), or None."""
        value: bytes | None = faust_seam.partition_db(self.data, partition).get(key)
        return value

    def reader(self, partition: int) -> Callable[[bytes], bytes | None]:
        """:meth:`read` bound to one local partition (the fold's per-event lookup, without the indirection)."""
        get: Callable[[bytes], bytes | None] = faust_seam.partition_db(self.data, partition).get
        return get

    def write_batch(self, partition: int, items: dict[bytes, bytes]) -> Coroutine[Any, Any, None]:
        """Write rows to a local partition in one RocksDB write batch, then to the changelog.

        The rows are written when this returns; the returned coroutine produces one changelog
        record per key (its last state) in Kafka record batches (:mod:`.changelog`) and must be
        awaited before the events are acknowledged. The store's persisted changelog offset advances
        as Kafka acknowledges them, as for ordinary Faust table writes.
        """
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in items.items():
            batch.put(key, value)
        faust_seam.partition_db(self.data, partition).write(batch)
        return produce_changelog(self, partition, items)

    # -- derived state ----------------------------------------------------------------------
    def iter_partition(self, partition: int) -> Iterator[tuple[bytes, EntryState]]:
        """Every row of one local partition as ``(pix_key_bytes, state)``."""
        store = self.data
        db = faust_seam.partition_db(store, partition)  # faust RocksDB store: one DB per partition
        for key, value in faust_seam.visible_items(store, db):
            if key != OFFSET_KEY:
                yield key, EntryState.decode(value)

    def partition_state(self, partition: int) -> PartitionState:
        """The derived state of a local partition, rebuilt from its rows if not yet known."""
        pstate = self.partition_states.get(partition)
        if pstate is None:
            pstate = self.partition_states[partition] = PartitionState(self.scan_partition(partition),
                                                                       self.source_offset(partition))
        return pstate

    def pair_rows(self, partition: int, participant: str, key_type: str) -> Iterator[tuple[bytes, str]]:
        """``(pix_key_bytes, cid)`` of the active rows of one pair in one local partition.

        Safe to run in a worker thread (RocksDB iterators read a consistent snapshot).
        """
        prefix = pair_prefix(participant, key_type)
        store = self.data
        for key, value in faust_seam.visible_items(store, faust_seam.partition_db(store, partition)):
            if value.startswith(prefix):
                cid = EntryState.decode(value).cid
                if cid is not None:
                    yield key, cid

    def find_cids(self, wanted: dict[tuple[str, str], set[str]],
                  partitions: list[int] | None = None) -> dict[tuple[str, str], dict[str, str]]:
        """Find the Pix keys that hold given CIDs, for several (participant, key type) at once.

        One pass over the local partitions serves every pair (a reconciliation of each NOK pair
        asks at the same time). Safe to run in a worker thread.

        Args:
            wanted: (participant, key type) → CIDs (64 lower-case hex) looked for.
            partitions: the local partitions to search (all local ones when None).

        Returns:
            (participant, key type) → {CID: Pix key} for the CIDs found active locally.
        """
        prefixes = {pair_prefix(p, t): (p, t) for p, t in wanted}
        found: dict[tuple[str, str], dict[str, str]] = {pair: {} for pair in wanted}
        store = self.data
        for partition in sorted(self.partition_states) if partitions is None else partitions:
            db = faust_seam.partition_db(store, partition)
            for key, value in faust_seam.visible_items(store, db):
                end = value.find(b'"', 13)  # ["<ISPB>","<key type>",…: the key type's closing quote
                pair = prefixes.get(value[:end + 2])
                if pair is None:
                    continue
                state = EntryState.decode(value)
                if state.cid is not None and state.cid in wanted[pair]:
                    found[pair][state.cid] = key.decode("utf-8")
        return found

    def scan_partition(self, partition: int) -> VSyncLedger:
        """Recompute a partition's ledger from its rows (O(rows))."""
        ledger = VSyncLedger()
        for _key, state in self.iter_partition(partition):
            if state.cid is not None:
                ledger.add(state.participant, state.key_type, state.cid)
        return ledger

    def audit_ledgers(self) -> list[int]:
        """Recompute every local ledger from the table and repair any that differ (invariant I1).

        Runs without awaiting, so no event is folded meanwhile; O(rows), about a second per million.

        Returns:
            The partitions whose served ledger differed from the table (normally empty).
        """
        drifted = []
        for partition, pstate in self.partition_states.items():
            fresh = self.scan_partition(partition)
            if fresh != pstate.ledger:
                drifted.append(partition)
                pstate.ledger = fresh
        self._report_drift(drifted)
        return drifted

    def _report_drift(self, drifted: list[int]) -> None:
        self.checks += 1
        if drifted:
            self.drift_events += len(drifted)
            self.last_drift = sorted(drifted)
            LEDGER_DRIFT.inc(len(drifted))
            log.error("VSync ledger differed from the entries table in partitions %s; repaired from the table",
                      sorted(drifted))

    def report(self) -> PartitionReport:
        """This worker's active partitions with their ledgers and offsets, read at one instant.

        Runs without awaiting, so every partition's ledger matches its offset (invariant I4).
        """
        states = {p: PartitionState(_copy(s.ledger), s.offset) for p, s in sorted(self.partition_states.items())}
        return PartitionReport(self.generation, self.recovering, states)


def _copy(ledger: VSyncLedger) -> VSyncLedger:
    copy = VSyncLedger()
    copy.merge(ledger)
    return copy


@dataclass(frozen=True, slots=True)
class PartitionReport:
    """What one worker holds: the group generation it saw, whether it is recovering, and per
    active partition its ledger and last folded offset of the key-events topic."""

    generation: int
    recovering: bool
    partitions: dict[int, PartitionState]

    def to_json(self) -> dict[str, Any]:
        """The ``GET /internal/partitions`` document."""
        return {"generation": self.generation, "recovering": self.recovering,
                "partitions": {str(p): {"offset": s.offset, "pairs": s.ledger.to_json()}
                               for p, s in self.partitions.items()}}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PartitionReport:
        """Parse a ``GET /internal/partitions`` document.

        Raises:
            ValueError: a malformed document.
        """
        try:
            parts = {int(p): PartitionState(VSyncLedger.from_json(v["pairs"]),
                                            None if v["offset"] is None else int(v["offset"]))
                     for p, v in doc["partitions"].items()}
            return cls(int(doc["generation"]), bool(doc["recovering"]), parts)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed partition report: {exc}") from None
