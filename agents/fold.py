"""Fold agent: applies key events from Kafka to the entries table and the VSync ledgers.

Failure policy: a decode or contract error is dead-lettered with its reason and the stream goes on;
only infrastructure errors (Kafka, RocksDB) escape and restart the agent, and the event is then
replayed, which the fold absorbs (DESIGN 3.3, invariant I2).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import faust

from vsync_stream.dead_letters import dead_letter_record
from vsync_stream.domain.events import decode_event
from vsync_stream.domain.fold import EntryState, FoldStatus, fold
from vsync_stream.errors import InvalidEvent
from vsync_stream.metrics import EVENTS_DUPLICATE, EVENTS_FOLDED, EVENTS_STALE
from vsync_stream.tables.entries import EntriesTable


def make_fold_agent(app: faust.App, source: faust.TopicT, dead_letters: faust.TopicT, entries: EntriesTable,
                    max_event_bytes: int) -> Any:
    """Register the fold agent on ``app``: one actor per partition of ``source``."""

    @app.agent(source, name="fold_key_events")
    async def fold_key_events(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for event in stream.events():
            message = event.message
            try:
                key_event = decode_event(event.value, max_event_bytes)
                pix_key = key_event.key.encode("utf-8")
                if event.key is not None and event.key != pix_key:
                    raise InvalidEvent("key_mismatch", "Kafka record key differs from the event's Pix key")
            except InvalidEvent as exc:
                record = dead_letter_record(event.value or b"", exc, stage="fold", source={
                    "topic": message.topic, "partition": message.partition, "offset": message.offset})
                await dead_letters.send(key=event.key, value=record)
                continue
            pstate = entries.partition_state(message.partition)
            raw = entries.get(pix_key)
            outcome = fold(EntryState.decode(raw) if raw is not None else None, key_event)
            if outcome.status is FoldStatus.STALE:
                EVENTS_STALE.inc()
            else:
                # A duplicate is written again: if a crash lost the first changelog write, the
                # replay must put it back, or a standby restoring from the changelog would differ.
                assert outcome.state is not None
                entries[pix_key] = outcome.state.encode()
                if outcome.status is FoldStatus.DUPLICATE:
                    EVENTS_DUPLICATE.inc()
                else:
                    EVENTS_FOLDED.inc()
                    if outcome.removed is not None:
                        pstate.ledger.remove(*outcome.removed)
                    if outcome.added is not None:
                        pstate.ledger.add(*outcome.added)
            pstate.offset = message.offset
            yield None

    return fold_key_events
