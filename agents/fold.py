"""Fold agent: applies key-events records from Kafka to the entries table and the VSync ledgers.

Events are taken in batches (``take_events``); per partition, each batch is folded in order and
written as one RocksDB write batch plus one changelog record per key changed (the last state wins,
as compaction would keep it). Offsets are acknowledged only after the batch is written, so a crash
replays it, which the fold absorbs (DESIGN 3.3, invariant I2).

Failure policy: a decode or contract error is dead-lettered with its reason and the stream goes on;
an infrastructure error (Kafka, RocksDB) stops the worker process at once, without committing the
batch's offsets, so that the batch is replayed after the restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import faust
from faust.types import TP

from vsync_stream.dead_letters import dead_letter_record
from vsync_stream.domain.events import decode_change
from vsync_stream.domain.fold import EntryState, FoldStatus, fold
from vsync_stream.errors import InvalidEvent
from vsync_stream.metrics import EVENTS_DUPLICATE, EVENTS_FOLDED, EVENTS_STALE
from vsync_stream.tables.entries import OFFSET_KEY, EntriesTable, encode_offset

log = logging.getLogger(__name__)

EXIT_FOLD_FAILED = 70  # EX_SOFTWARE: the supervisor restarts the worker
BATCH_MAX = 5000
BATCH_WITHIN_S = 0.1



def make_fold_agent(app: faust.App, source: faust.TopicT, dead_letters: faust.TopicT, entries: EntriesTable,
                    max_event_bytes: int) -> Any:
    """Register the fold agent on ``app``: one actor per partition of ``source``."""

    async def fold_batch(batch: Sequence[faust.EventT]) -> None:
        writes: dict[int, dict[bytes, bytes]] = {}
        rejected: list[tuple[bytes | None, bytes]] = []
        folded = duplicate = stale = revoked = 0
        seek_back: dict[TP, int] = {}
        # Nothing in this loop awaits: the ledgers change together with the rows written just
        # after it, so a ledger check, a snapshot or a rebalance never sees one without the
        # other (invariant I1). Dead letters are sent once the batch is written.
        assigned = app.consumer.assignment()
        for event in batch:
            message = event.message
            partition = message.partition
            if partition not in entries.partition_states and message.tp not in assigned:
                revoked += 1  # the partition moved to another worker, which folds it from its own offset
                continue
            if message.tp in seek_back:
                continue  # after a gap: re-delivered once the consumer is back at the gap
            pstate = entries.partition_state(partition)
            if pstate.offset is not None and message.offset > pstate.offset + 1:
                # The consumer is past offsets this partition never folded (its position came from
                # an offset committed ahead of the changelog, or a rebalance dropped fetched events):
                # go back to the first missing one. Nothing after it is folded meanwhile.
                seek_back[message.tp] = pstate.offset + 1
                continue
            if pstate.offset is None or message.offset > pstate.offset:
                pstate.offset = message.offset  # a replay after a seek back changes nothing (I2)
            pending = writes.setdefault(partition, {})
            try:
                change = decode_change(event.value, max_event_bytes)
                pix_key = change.key.encode("utf-8")
                if event.key is not None and event.key != pix_key:
                    raise InvalidEvent("key_mismatch", "Kafka record key differs from the event's Pix key")
            except InvalidEvent as exc:
                rejected.append((event.key, dead_letter_record(event.value or b"", exc, stage="fold", source={
                    "topic": message.topic, "partition": partition, "offset": message.offset})))
                continue
            raw = pending.get(pix_key)
            if raw is None:
                raw = entries.read(partition, pix_key)
            outcome = fold(EntryState.decode(raw) if raw is not None else None, change)
            if outcome.status is FoldStatus.STALE:
                stale += 1
                continue
            # A duplicate is written again: if a crash lost the first changelog write, the
            # replay must put it back, or a standby restoring from the changelog would differ.
            assert outcome.state is not None
            pending[pix_key] = outcome.state.encode()
            if outcome.status is FoldStatus.DUPLICATE:
                duplicate += 1
                continue
            folded += 1
            if outcome.removed is not None:
                pstate.ledger.remove(*outcome.removed)
            if outcome.added is not None:
                pstate.ledger.add(*outcome.added)
        for partition, pending in writes.items():  # last in each partition's write: its source offset
            pending[OFFSET_KEY] = encode_offset(entries.partition_states[partition].offset)  # type: ignore[arg-type]
        # Every partition's rows are written before the first await (see above); then their
        # changelog records go out as Kafka record batches, handed to the producer before the
        # batch's offsets can be acknowledged.
        changelogs = [entries.write_batch(partition, items) for partition, items in writes.items() if items]
        for changelog in changelogs:
            await changelog
        for tp, offset in seek_back.items():
            log.warning("partition %d of %s: events from offset %d were not folded; consuming again from there",
                        tp.partition, tp.topic, offset)
            await app.consumer.seek(tp, offset)
        if revoked:
            log.info("%d events of partitions revoked from this worker left to their new owner", revoked)
        if rejected:  # the batch's offsets are acknowledged only once Kafka holds its dead letters (I3)
            await asyncio.gather(*[await dead_letters.send(key=key, value=record) for key, record in rejected])
        EVENTS_FOLDED.inc(folded)
        EVENTS_DUPLICATE.inc(duplicate)
        EVENTS_STALE.inc(stale)

    @app.agent(source, name="fold_key_events")
    async def fold_key_events(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for batch in stream.take_events(BATCH_MAX, BATCH_WITHIN_S):
            try:
                await fold_batch(batch)
            except Exception:
                # Faust's take_events acknowledges a batch even when the agent raises, so an
                # infrastructure error (RocksDB, Kafka) must not escape: the worker stops at once,
                # without committing, and the batch is replayed after the restart — which the
                # fold absorbs (invariant I2). Decode errors never get here: they are dead letters.
                log.critical("the fold failed on a batch of %d events; stopping the worker without committing "
                             "its offsets (they are replayed on restart)", len(batch), exc_info=True)
                logging.shutdown()
                os._exit(EXIT_FOLD_FAILED)
            yield None

    return fold_key_events
