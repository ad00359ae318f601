"""Fold agent: applies key-events records from Kafka to the entries table and the VSync ledgers.

Events are taken in batches (``take_events``); per partition, each batch is folded in order and
written as one RocksDB write batch plus one changelog record per key changed (the last state wins,
as compaction would keep it). Offsets are acknowledged only after the batch is written, so a crash
replays it, which the fold absorbs (DESIGN 3.3, invariant I2).

Failure policy: a decode or contract error is dead-lettered with its reason and the stream goes on;
only infrastructure errors (Kafka, RocksDB) escape and restart the agent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import faust

from vsync_stream.dead_letters import dead_letter_record
from vsync_stream.domain.events import decode_change
from vsync_stream.domain.fold import EntryState, FoldStatus, fold
from vsync_stream.errors import InvalidEvent
from vsync_stream.metrics import EVENTS_DUPLICATE, EVENTS_FOLDED, EVENTS_STALE
from vsync_stream.tables.entries import EntriesTable

BATCH_MAX = 5000
BATCH_WITHIN_S = 0.1


def make_fold_agent(app: faust.App, source: faust.TopicT, dead_letters: faust.TopicT, entries: EntriesTable,
                    max_event_bytes: int) -> Any:
    """Register the fold agent on ``app``: one actor per partition of ``source``."""

    @app.agent(source, name="fold_key_events")
    async def fold_key_events(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for batch in stream.take_events(BATCH_MAX, BATCH_WITHIN_S):
            writes: dict[int, dict[bytes, bytes]] = {}
            dead: list[Any] = []
            folded = duplicate = stale = 0
            for event in batch:
                message = event.message
                try:
                    change = decode_change(event.value, max_event_bytes)
                    pix_key = change.key.encode("utf-8")
                    if event.key is not None and event.key != pix_key:
                        raise InvalidEvent("key_mismatch", "Kafka record key differs from the event's Pix key")
                except InvalidEvent as exc:
                    record = dead_letter_record(event.value or b"", exc, stage="fold", source={
                        "topic": message.topic, "partition": message.partition, "offset": message.offset})
                    dead.append(await dead_letters.send(key=event.key, value=record))
                    continue
                partition = message.partition
                pstate = entries.partition_state(partition)
                pending = writes.setdefault(partition, {})
                raw = pending.get(pix_key)
                if raw is None:
                    raw = entries.read(partition, pix_key)
                outcome = fold(EntryState.decode(raw) if raw is not None else None, change)
                pstate.offset = message.offset
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
            for partition, items in writes.items():
                if items:
                    entries.write_batch(partition, items)
            if dead:  # the batch's offsets are acknowledged only once Kafka holds its dead letters (I3)
                await asyncio.gather(*dead)
            EVENTS_FOLDED.inc(folded)
            EVENTS_DUPLICATE.inc(duplicate)
            EVENTS_STALE.inc(stale)
            yield None

    return fold_key_events
