"""The events of one key are totally ordered (issue #14, item 5; DESIGN 4.1).

Some events carry a version, others only ``occurredAt``; the state the fold ends in must not depend
on the order they arrive in, and a replayed duplicate must never change it.
"""

from __future__ import annotations

import itertools
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from vsync_stream.domain.events import KeyChange
from vsync_stream.domain.fold import EntryState, FoldStatus, fold, is_older, ordering_token
from vsync_stream.domain.vsync import VSyncLedger

KEY, P1, P2 = "+5511987654321", "12345678", "00000208"


def change(version: int | None, ms: int, cid_byte: int | None, participant: str = P1,
           event_id: str | None = None) -> KeyChange:
    cid = None if cid_byte is None else f"{cid_byte:02x}" * 32
    return KeyChange(event_id or str(uuid.uuid4()), "key.deleted" if cid is None else "key.updated", ms, version, KEY,
                     "PHONE", participant, cid, None if cid is None else str(uuid.UUID(int=cid_byte or 0)))


def run(events: list[KeyChange]) -> tuple[EntryState | None, dict[tuple[str, str], int]]:
    state: EntryState | None = None
    ledger = VSyncLedger()
    for event in events:
        out = fold(state, event)
        if out.removed:
            ledger.remove(*out.removed)
        if out.added:
            ledger.add(*out.added)
        state = out.state
    return state, {(p, t): ledger.vsync(p, t) for p in (P1, P2) for t in ("PHONE",)}


def test_the_old_comparison_had_a_cycle_the_new_one_has_not() -> None:
    # A(v2, t=100), B(v1, t=200), C(no version, t=150): by the old rule B < A (versions), A < C and
    # C < B (timestamps) — a cycle. Every arrival order must now end in the same state.
    a, b, c = change(2, 100, 1), change(1, 200, 2), change(None, 150, 3)
    ends = [run(list(order)) for order in itertools.permutations([a, b, c])]
    assert all(end == ends[0] for end in ends)
    state, vsyncs = ends[0]
    assert state is not None and state.event_id == a.event_id  # the highest version wins
    assert vsyncs[(P1, "PHONE")] == int(a.cid or "0", 16)


def test_an_event_without_a_version_orders_before_any_with_one() -> None:
    versioned = change(1, 0, 1)
    later_unversioned = change(None, 10_000, 2)
    stored = fold(None, versioned).state
    assert stored is not None and is_older(later_unversioned, stored)
    assert ordering_token(None, 10_000, "z") < ordering_token(0, 0, "a")


def test_a_reused_event_id_with_another_token_is_ordered_not_taken_for_a_replay() -> None:
    first, second = change(1, 0, 1, event_id="e"), change(2, 0, 2, event_id="e")
    assert run([first, second])[0] == run([second, first])[0] == fold(None, second).state


events_strategy = st.lists(
    st.tuples(st.one_of(st.none(), st.integers(0, 4)), st.integers(0, 5), st.one_of(st.none(), st.integers(1, 6)),
              st.sampled_from([P1, P2])),
    min_size=1, max_size=7,
).map(lambda specs: [change(v, ms, c, p) for v, ms, c, p in specs])


@settings(max_examples=300, deadline=None)
@given(events=events_strategy, data=st.data())
def test_any_arrival_order_with_any_replays_ends_in_the_state_of_the_greatest_event(
        events: list[KeyChange], data: st.DataObject) -> None:
    greatest = max(events, key=lambda e: ordering_token(e.version, e.occurred_at_ms, e.event_id))
    want = run([greatest])
    order = data.draw(st.permutations(events))
    replays = data.draw(st.lists(st.sampled_from(events), max_size=5))
    positions = data.draw(st.lists(st.integers(0, len(order) + len(replays)), min_size=len(replays),
                                   max_size=len(replays)))
    arrival = list(order)
    for replay, at in zip(replays, positions, strict=True):
        arrival.insert(min(at, len(arrival)), replay)
    assert run(arrival) == want


@settings(max_examples=200, deadline=None)
@given(events=events_strategy, data=st.data())
def test_a_replayed_duplicate_never_changes_state(events: list[KeyChange], data: st.DataObject) -> None:
    state = run(events)[0]
    assert state is not None
    replay = data.draw(st.sampled_from(events))
    out = fold(state, replay)
    assert out.state == state and out.removed is None and out.added is None
    assert out.status in (FoldStatus.DUPLICATE, FoldStatus.STALE)


def test_the_order_is_a_strict_total_order_on_a_sample() -> None:
    sample = [change(v, ms, 1) for v in (None, 0, 1, 2) for ms in (0, 1, 2)]
    tokens = [ordering_token(e.version, e.occurred_at_ms, e.event_id) for e in sample]
    for x, y, z in itertools.product(tokens, repeat=3):
        assert (x < y) + (y < x) + (x == y) == 1
        if x < y and y < z:
            assert x < z
