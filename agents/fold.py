"""Fold: applies key-events records from Kafka to the entries table and the VSync ledgers.

The consumer hands over each partition's records of a fetch at once (``bridges/kafka_batches.py``;
up to ``broker_max_poll_records`` per fetch): they are folded in offset order and written as one
RocksDB write batch plus one changelog record per key changed (the last state wins, as compaction
would keep it), followed in both by the partition's source offset (``OFFSET_KEY``). Offsets are
acknowledged only after the batch is written and its changelog records handed to the producer, so
a crash replays the batch, which the fold absorbs (DESIGN 3.3, invariant I2).

Failure policy: a decode or contract error is dead-lettered with its reason and the stream goes on;
an infrastructure error (Kafka, RocksDB) stops the worker process at once, without acknowledging
the batch's offsets, so that the batch is replayed after the restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence

import faust
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from vsync_stream.bridges import kafka_batches
from vsync_stream.dead_letters import dead_letter_record
from vsync_stream.domain.events import decode_change
from vsync_stream.domain.fold import EntryState, FoldStatus, fold
from vsync_stream.errors import InvalidEvent
from vsync_stream.metrics import CORRECTIONS_SUPERSEDED, EVENTS_DUPLICATE, EVENTS_FOLDED, EVENTS_STALE
from vsync_stream.tables.entries import OFFSET_KEY, EntriesTable, encode_offset

log = logging.getLogger(__name__)

EXIT_FOLD_FAILED = 70  # EX_SOFTWARE: the supervisor restarts the worker

_APPLIED, _DUPLICATE, _SUPERSEDED = FoldStatus.APPLIED, FoldStatus.DUPLICATE, FoldStatus.SUPERSEDED


class Fold:
    """The fold of one worker: key-events records of a partition in, table rows and ledgers out."""

    def __init__(self, app: faust.App, dead_letters: faust.TopicT, entries: EntriesTable,
                 max_event_bytes: int) -> None:
        self.app = app
        self.dead_letters = dead_letters
        self.entries = entries
        self.max_event_bytes = max_event_bytes
        self._sought: dict[TP, int] = {}  # partition -> offset it was sent back to, until read from there

    async def __call__(self, tp: TP, records: Sequence[ConsumerRecord]) -> int:
        """Fold one partition's records (offset order); the :data:`~kafka_batches.BatchHandler` contract.

        Returns:
            How many records, from the first, were folded (or dead-lettered) and may be
            acknowledged: all of them, or none when the partition was revoked or must be read
            again from an earlier offset (a seek was made).
        """
        try:
            return await self._fold(tp, records)
        except Exception:
            # An infrastructure error (RocksDB, Kafka) must not leave a half-applied batch behind
            # a live consumer: the worker stops at once, without acknowledging, and the batch is
            # replayed after the restart — which the fold absorbs (invariant I2). Decode errors
            # never get here: they are dead letters.
            log.critical("the fold failed on %d events of partition %d; stopping the worker without committing "
                         "their offsets (they are replayed on restart)", len(records), tp.partition, exc_info=True)
            logging.shutdown()
            os._exit(EXIT_FOLD_FAILED)

    async def _fold(self, tp: TP, records: Sequence[ConsumerRecord]) -> int:
        entries = self.entries
        partition = tp.partition
        if partition not in entries.partition_states and tp not in self.app.consumer.assignment():
            log.info("%d events of partition %d, revoked from this worker, left to its new owner", len(records),
                     partition)
            return 0
        pstate = entries.partition_state(partition)
        last = pstate.offset
        first = records[0].offset
        if last is not None and first > last + 1:
            if self._sought.pop(tp, None) != last + 1:
                # The consumer is past offsets this partition never folded (its position came from
                # an offset committed ahead of the changelog, or a rebalance dropped fetched
                # records): go back to the first missing one. Nothing after it is folded meanwhile.
                return await self._seek_back(tp, last + 1)
            # Read from there and the topic still starts later: those offsets hold no event
            # (transaction markers) or retention deleted them before they were folded.
            log.error("partition %d of %s: offsets %d to %d are not in the topic (deleted by retention before they "
                      "were folded, or transaction markers); folding on from %d — if events were lost, the next "
                      "verification finds the difference and reconciliation repairs it", partition, tp.topic,
                      last + 1, first - 1, first)
        self._sought.pop(tp, None)
        pending: dict[bytes, bytes] = {}
        rejected: list[tuple[bytes | None, bytes]] = []
        folded = duplicate = stale = superseded = 0
        ledger = pstate.ledger
        read = entries.reader(partition)
        max_bytes = self.max_event_bytes
        # Nothing in this loop awaits: the ledger changes together with the rows written just
        # after it, so a ledger check, a snapshot or a rebalance never sees one without the other
        # (invariant I1). Dead letters are sent once the rows are written.
        for record in records:
            offset = record.offset
            if last is None or offset > last:
                last = offset  # a replay after a seek back changes nothing (I2) and keeps the offset
            value = record.value
            try:
                change = decode_change(value, max_bytes)
                pix_key = change.key.encode("utf-8")
                if record.key != pix_key:  # the key decides the partition, so the partition owns the key
                    if record.key is None:
                        raise InvalidEvent("key_missing", "Kafka record has no key (the Pix key, which decides "
                                                          "its partition)")
                    raise InvalidEvent("key_mismatch", "Kafka record key differs from the event's Pix key")
            except InvalidEvent as exc:
                rejected.append((record.key, dead_letter_record(value or b"", exc, stage="fold", source={
                    "topic": tp.topic, "partition": partition, "offset": offset})))
                continue
            raw = pending.get(pix_key)
            if raw is None:
                raw = read(pix_key)
            outcome = fold(EntryState.decode(raw) if raw is not None else None, change)
            status = outcome.status
            if status is _APPLIED:
                folded += 1
                if outcome.removed is not None:
                    ledger.remove(*outcome.removed)
                if outcome.added is not None:
                    ledger.add(*outcome.added)
            elif status is _DUPLICATE:
                duplicate += 1
            else:  # stale, or a correction superseded by a newer change (counted as stale too)
                stale += 1
                superseded += status is _SUPERSEDED
                continue
            # A duplicate is written again: if a crash lost the first changelog write, the replay
            # must put it back, or a standby restoring from the changelog would differ.
            pending[pix_key] = outcome.state.encode()  # type: ignore[union-attr]
        pstate.offset = last
        pending[OFFSET_KEY] = encode_offset(last)  # type: ignore[arg-type]  # last in the batch: its source offset
        # The rows are written now; their changelog records go out as Kafka record batches, handed
        # to the producer before the records' offsets can be acknowledged.
        await entries.write_batch(partition, pending)
        if rejected:  # acknowledged only once Kafka holds the dead letters (I3)
            sent = [await self.dead_letters.send(key=key, value=record) for key, record in rejected]
            await asyncio.gather(*sent)
        EVENTS_FOLDED.inc(folded)
        EVENTS_DUPLICATE.inc(duplicate)
        EVENTS_STALE.inc(stale)
        if superseded:
            CORRECTIONS_SUPERSEDED.inc(superseded)
        return len(records)

    async def _seek_back(self, tp: TP, offset: int) -> int:
        log.warning("partition %d of %s: events from offset %d were not folded; consuming again from there",
                    tp.partition, tp.topic, offset)
        self._sought[tp] = offset
        await self.app.consumer.seek(tp, offset)
        return 0


def register_fold(app: faust.App, source: faust.TopicT, dead_letters: faust.TopicT, entries: EntriesTable,
                  max_event_bytes: int) -> Fold:
    """Fold ``source`` (the key-events topic) into ``entries``, batch by batch, on ``app``'s consumer."""
    handler = Fold(app, dead_letters, entries, max_event_bytes)
    kafka_batches.register(app, source, handler)
    return handler

