"""The fold: one idempotent, order-safe state transition per key event (DESIGN 3.3).

The entries table holds, per Pix key, an :class:`EntryState`: the CID it currently contributes to
its (participant, key type) VSync, or a tombstone after a delete, together with the ordering token
of the last event applied. Every VSync change is derived from that state (``vsync ^= old ^ new``
with ``old`` read from the table, never from the event), so:

* a duplicate (same event id) or a replay of an older event changes nothing (invariant I2);
* a stale event (older ordering token than the table holds) is counted and not applied;
* a tombstone keeps its token, so a late create cannot resurrect a deleted key;
* claims (delete at the donor, create at the claimer) end right in either arrival order, because
  the row is keyed by the Pix key and ordered by the key's version;
* a conditional event (a reconciliation's correction, carrying an :class:`Expectation`) is applied
  only while the row is still the one the correction was judged against; otherwise it is
  superseded (issue #14: a correction built from an older read never beats a newer event).
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

import orjson

from vsync_stream.domain.events import Expectation, KeyChange


class FoldStatus(StrEnum):
    """What the fold did with an event."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    SUPERSEDED = "superseded"  # a correction whose expected row changed meanwhile (counted with stale)


class EntryState(NamedTuple):
    """The entries-table value of one Pix key.

    ``cid`` is None for a tombstone (the key was deleted). ``version`` and ``occurred_at_ms``
    (epoch ms) with ``event_id`` form the ordering token of the last event applied. A named tuple,
    not a frozen dataclass: the fold builds one per event, and a frozen dataclass costs three
    times as much to build (BENCHMARKS.md).
    """

    participant: str
    key_type: str
    cid: str | None
    request_id: str | None
    version: int | None
    occurred_at_ms: int
    event_id: str

    @property
    def active(self) -> bool:
        """True when the key is an active entry (not a tombstone)."""
        return self.cid is not None

    def encode(self) -> bytes:
        """Compact table encoding (a JSON array)."""
        return orjson.dumps(
            [self.participant, self.key_type, self.cid, self.request_id, self.version, self.occurred_at_ms,
             self.event_id]
        )

    @classmethod
    def decode(cls, data: bytes) -> EntryState:
        """Inverse of :meth:`encode`.

        Raises:
            ValueError: the bytes are not an encoded state.
        """
        p, t, c, r, v, o, e = orjson.loads(data)
        return cls(p, t, c, r, v, o, e)


# (participant, key type, CID): one contribution to a VSync.
Contribution = tuple[str, str, str]


class FoldOutcome(NamedTuple):
    """The result of folding one event: the new state and the VSync contributions it moves."""

    status: FoldStatus
    state: EntryState | None
    removed: Contribution | None = None
    added: Contribution | None = None


# The ordering token of an event, compared lexicographically: (has a version, version, occurredAt ms,
# event id). See :func:`ordering_token`.
OrderingToken = tuple[bool, int, int, str]


def ordering_token(version: int | None, occurred_at_ms: int, event_id: str) -> OrderingToken:
    """The total order of the events of one key (DESIGN 4.1, issue #14 item 5).

    Events are compared by this tuple, lexicographically:

    1. an event **without** a version orders before every event **with** one (a version is the
       source's own sequence for the key: once the key's events carry versions, they decide);
    2. then by version (both sides carry one, or both sides carry none: the value 0);
    3. then by ``occurredAt`` (epoch ms);
    4. then by event id (a UUID in lower case), so two distinct events never tie.

    The order used to be "version where both sides carry one, else occurredAt", which is not
    transitive: A(v2, t=100) < B(v1, t=200)? no, B < A by version; A < C(no version, t=150) and
    C < B by time — a cycle, so the state depended on arrival order.

    Returns:
        A tuple; a smaller tuple is an older event.
    """
    return (version is not None, version if version is not None else 0, occurred_at_ms, event_id)


def is_older(event: KeyChange, stored: EntryState) -> bool:
    """Tell whether ``event`` orders strictly before the event that produced ``stored``.

    The order is total (see :func:`ordering_token`), so folding any permutation of a key's events
    ends in the state of the greatest one.
    """
    return (ordering_token(event.version, event.occurred_at_ms, event.event_id)
            < ordering_token(stored.version, stored.occurred_at_ms, stored.event_id))


def is_same_event(event: KeyChange, stored: EntryState) -> bool:
    """Tell whether ``event`` is a replay of the event that produced ``stored`` (same id and token)."""
    return (event.event_id == stored.event_id and event.version == stored.version
            and event.occurred_at_ms == stored.occurred_at_ms)


def expectation_holds(stored: EntryState | None, event: KeyChange, expected: Expectation) -> bool:
    """Tell whether the table still holds what a conditional event expects (issue #14, item 2).

    "Absent" holds only while the key has no row. Otherwise the row must carry the expected CID
    (None: a tombstone) and ordering token; a removal also checks that the row belongs to its
    participant and key type (one judged for a pair must not delete a key that moved to another,
    e.g. by a claim), while an add or replace may move a key to the DICT's pair.
    """
    if expected.event_id is None:
        return stored is None
    if (stored is None or stored.event_id != expected.event_id or stored.cid != expected.cid
            or stored.version != expected.version or stored.occurred_at_ms != expected.occurred_at_ms):
        return False
    return event.cid is not None or (stored.participant == event.participant and stored.key_type == event.key_type)


def fold(stored: EntryState | None, event: KeyChange) -> FoldOutcome:
    """Apply one event to the state the table holds for its key.

    Args:
        stored: the table's current state for ``event.key``, or None if the key was never seen.
        event: a validated change (see ``vsync_stream.domain.events.KeyChange``).

    Returns:
        The outcome; ``state`` is what the table must hold afterwards (unchanged when not applied),
        ``removed``/``added`` are the VSync contributions to XOR out/in.
    """
    if stored is not None and is_same_event(event, stored):
        return FoldOutcome(FoldStatus.DUPLICATE, stored)
    expected = event.expected
    if expected is not None and not expectation_holds(stored, event, expected):
        return FoldOutcome(FoldStatus.SUPERSEDED, stored)
    # A reused event id with another token is not a replay: the order decides, like any event.
    if stored is not None and is_older(event, stored):
        return FoldOutcome(FoldStatus.STALE, stored)
    removed: Contribution | None = None
    if stored is not None and stored.cid is not None:
        removed = (stored.participant, stored.key_type, stored.cid)
    cid = event.cid
    state = EntryState(event.participant, event.key_type, cid, event.request_id, event.version,
                       event.occurred_at_ms, event.event_id)
    if cid is None:
        return FoldOutcome(FoldStatus.APPLIED, state, removed, None)
    added = (event.participant, event.key_type, cid)
    if removed == added:  # an update that changes no hashed field keeps the same CID
        return FoldOutcome(FoldStatus.APPLIED, state, None, None)
    return FoldOutcome(FoldStatus.APPLIED, state, removed, added)
