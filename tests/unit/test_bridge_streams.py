"""The CID event walk over an in-memory DICT log: exact deduplication of the overlapping pages."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsync_stream.bridges.bridge_proto import CidEvent, CidEventsPage
from vsync_stream.bridges.bridge_streams import CidEventsWalk
from vsync_stream.domain.vsync import vsync_hex
from vsync_stream.errors import BridgeError

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CIDS = [f"{i:064x}" for i in range(1, 5)]  # few CIDs, so (cid, type) repeats within a timestamp


class FakeLog:
    """The DICT's "list CID events": start inclusive, end exclusive, at most ``limit``, in log order."""

    def __init__(self, events: list[CidEvent]) -> None:
        self.events = events
        self.vsync_after: list[str] = []
        acc = 0
        for event in events:
            acc ^= int(event.cid, 16)
            self.vsync_after.append(vsync_hex(acc))
        self.requests = 0

    async def page(self, participant: str, key_type: str, start: datetime, end: datetime | None,
                   limit: int) -> CidEventsPage:
        self.requests += 1
        chosen = [i for i, e in enumerate(self.events) if e.timestamp >= start and (end is None or e.timestamp < end)]
        taken = chosen[:limit]
        return CidEventsPage([self.events[i] for i in taken], len(chosen) > limit,
                             self.vsync_after[taken[0]] if taken else None,
                             self.vsync_after[taken[-1]] if taken else None)


def make_log(groups: list[list[tuple[int, Literal["ADDED", "REMOVED"]]]]) -> list[CidEvent]:
    """One timestamp per group (1 ms apart), its events in order."""
    return [CidEvent(CIDS[c], kind, T0 + timedelta(milliseconds=ms))
            for ms, group in enumerate(groups) for c, kind in group]


async def walk_all(log: FakeLog, page_size: int, since: datetime = T0,
                   until: datetime | None = None) -> tuple[list[CidEvent], CidEventsWalk]:
    walk = CidEventsWalk(log.page, "12345678", "EVP", since, until, page_size)
    return [event async for event in walk], walk


def test_pages_that_overlap_on_a_shared_timestamp_are_deduplicated_exactly() -> None:
    groups: list[list[tuple[int, Literal["ADDED", "REMOVED"]]]] = [
        [(0, "ADDED")],
        [(1, "ADDED"), (1, "REMOVED"), (1, "ADDED")],  # one CID added, removed and added again in 1 ms
        [(2, "ADDED"), (3, "ADDED")],
        [(2, "REMOVED")],
    ]
    log = FakeLog(make_log(groups))
    for page_size in range(4, 8):
        events, walk = asyncio.run(walk_all(log, page_size))
        assert events == log.events
        assert walk.vsync_after_first == log.vsync_after[0] and walk.vsync_after_last == log.vsync_after[-1]
        assert walk.duplicates == sum(len(p) for p in _boundaries(log.events, page_size))


def _boundaries(events: list[CidEvent], page_size: int) -> list[list[CidEvent]]:
    """What each page repeats of the previous one: its events at the previous page's last timestamp."""
    repeats: list[list[CidEvent]] = []
    start = events[0].timestamp
    while True:
        page = [e for e in events if e.timestamp >= start][:page_size]
        if len([e for e in events if e.timestamp >= start]) <= page_size:
            return repeats
        start = page[-1].timestamp
        repeats.append([e for e in page if e.timestamp == start])


def test_a_time_window_is_start_inclusive_and_end_exclusive() -> None:
    log = FakeLog(make_log([[(0, "ADDED")], [(1, "ADDED")], [(2, "ADDED")], [(3, "ADDED")]]))
    events, _ = asyncio.run(walk_all(log, 2, T0 + timedelta(milliseconds=1), T0 + timedelta(milliseconds=3)))
    assert [e.cid for e in events] == CIDS[1:3]
    empty, walk = asyncio.run(walk_all(log, 5, T0 + timedelta(days=1)))
    assert empty == [] and walk.pages == 1 and walk.vsync_after_last is None


def test_more_events_in_one_timestamp_than_a_page_raise() -> None:
    log = FakeLog(make_log([[(0, "ADDED"), (1, "ADDED"), (2, "ADDED")], [(3, "ADDED")]]))
    with pytest.raises(BridgeError, match="CID file"):
        asyncio.run(walk_all(log, 3))
    assert asyncio.run(walk_all(log, 4))[0] == log.events


def test_a_misbehaving_server_is_refused() -> None:
    async def out_of_order(*_: object) -> CidEventsPage:
        return CidEventsPage([CidEvent(CIDS[0], "ADDED", T0 - timedelta(seconds=1))], False, None, None)

    async def empty_but_more(*_: object) -> CidEventsPage:
        return CidEventsPage([], True, None, None)

    for page in (out_of_order, empty_but_more):
        with pytest.raises(BridgeError):
            asyncio.run(_drain(CidEventsWalk(page, "12345678", "EVP", T0, None, 10)))


async def _drain(walk: CidEventsWalk) -> list[CidEvent]:
    return [event async for event in walk]


group_strategy = st.lists(st.tuples(st.integers(0, len(CIDS) - 1), st.sampled_from(["ADDED", "REMOVED"])),
                          min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(groups=st.lists(group_strategy, min_size=0, max_size=25), page_size=st.integers(2, 8))
def test_the_walk_yields_the_log_exactly_or_says_it_cannot(
        groups: list[list[tuple[int, Literal["ADDED", "REMOVED"]]]], page_size: int) -> None:
    log = FakeLog(make_log(groups))
    # A timestamp holding a whole page (with events after it) or more cannot be paged past.
    stuck = any(len(g) > page_size or (len(g) == page_size and i < len(groups) - 1) for i, g in enumerate(groups))
    if stuck:
        with pytest.raises(BridgeError, match="CID file"):
            asyncio.run(walk_all(log, page_size))
    else:
        events, walk = asyncio.run(walk_all(log, page_size))
        assert events == log.events
        assert walk.vsync_after_last == (log.vsync_after[-1] if log.events else None)
