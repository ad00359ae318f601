"""The DICT simulator's own state: entries, CID sets, VSyncs and the CID event log (DESIGN 3.5).

The model is the DICT's side of the story and is independent of the pipeline: it holds what BACEN
holds. Every ordinary mutation returns the :class:`~vsync_stream.domain.events.KeyEvent` the
participant's connector would publish for it; the ``tamper_*`` methods change the DICT behind the
participant's back (no event), as BACEN's homologation drill does. Both kinds are written to the
DICT's CID event log, because that log is what the participant reads to reconcile (DESIGN 2.7).

The model is plain synchronous Python, not thread-safe: use it from one thread (the simulator's
event loop, or a test).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from array import array
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from vsync_stream.domain.entry import Entry
from vsync_stream.domain.events import KeyEvent
from vsync_stream.domain.vsync import VSyncLedger
from vsync_stream.domain.vsync import vsync_hex as _hex

Pair = tuple[str, str]  # (participant ISPB, key type)
CidEventType = Literal["ADDED", "REMOVED"]

# Fields the DICT lets the owning participant change with an update (BCB DICT API, "Atualizar
# vínculo"): the account and the owner's names. Changing the participant or the owner is a claim.
UPDATABLE_FIELDS = frozenset(
    {"branch", "account_number", "account_type", "opening_date", "owner_name", "owner_trade_name"}
)
_IDENTITY_FIELDS = frozenset({"key", "key_type"})
DEFAULT_REASON = "USER_REQUESTED"


def wall_clock_ms() -> int:
    """The current UTC time in epoch milliseconds (the model's default clock)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class CidLogEvent:
    """One entry of the DICT's CID event log of a (participant, key type).

    ``timestamp_ms`` is epoch milliseconds, UTC; ``vsync_after`` is the pair's VSync (64 hex
    chars) right after this event, which ``ListCidEvents`` reports per page.
    """

    cid: str
    type: CidEventType
    timestamp_ms: int
    vsync_after: str


class CidLog:
    """The CID event log of one (participant, key type), packed: 73 bytes per event.

    An append-only columnar store (timestamps, types, raw CIDs and raw VSyncs in flat arrays) instead
    of a list of objects holding two 64-char strings each, so a log of millions of events stays small.
    Timestamps never decrease.
    """

    __slots__ = ("_cids", "_timestamps", "_types", "_vsyncs")
    _TYPES: tuple[CidEventType, CidEventType] = ("ADDED", "REMOVED")

    def __init__(self) -> None:
        self._timestamps = array("q")
        self._types = bytearray()
        self._cids = bytearray()
        self._vsyncs = bytearray()

    def append(self, cid: str, kind: CidEventType, timestamp_ms: int, vsync_after: int) -> None:
        """Record one event; ``timestamp_ms`` is raised to the last one if the clock stepped back."""
        if self._timestamps and timestamp_ms < self._timestamps[-1]:
            timestamp_ms = self._timestamps[-1]
        self._timestamps.append(timestamp_ms)
        self._types.append(self._TYPES.index(kind))
        self._cids += bytes.fromhex(cid)
        self._vsyncs += vsync_after.to_bytes(32, "big")

    def __len__(self) -> int:
        return len(self._timestamps)

    def __getitem__(self, index: int) -> CidLogEvent:
        if not 0 <= index < len(self):
            raise IndexError("CID log index out of range")
        at = slice(32 * index, 32 * index + 32)
        return CidLogEvent(self._cids[at].hex(), self._TYPES[self._types[index]], self._timestamps[index],
                           self._vsyncs[at].hex())

    def first_at_or_after(self, timestamp_ms: int) -> int:
        """The index of the first event with a timestamp >= ``timestamp_ms`` (``len`` when none)."""
        return bisect_left(self._timestamps, timestamp_ms)


@dataclass(frozen=True, slots=True)
class Verification:
    """One sync verification the DICT answered; ``result`` is ``"OK"`` or ``"NOK"``."""

    verification_id: str
    participant: str
    key_type: str
    vsync: str
    result: Literal["OK", "NOK"]
    verified_at_ms: int


class DictModel:
    """The DICT's state for every participant the simulator serves.

    Args:
        clock_ms: returns the current time in epoch milliseconds, UTC; stamps events
            (``occurredAt``), the CID log and verifications. Defaults to the wall clock.
    """

    def __init__(self, clock_ms: Callable[[], int] = wall_clock_ms) -> None:
        self._clock_ms = clock_ms
        self._entries: dict[str, Entry] = {}
        self._cid_index: dict[str, str] = {}  # CID -> Pix key, for GetEntryByCid
        self._versions: dict[str, int] = {}  # kept after a delete: versions never go back
        self._pending_claims: dict[str, Entry] = {}  # key -> donor entry, between confirm and complete
        self._cids: dict[Pair, set[str]] = {}
        self._ledger = VSyncLedger()
        self._log: dict[Pair, CidLog] = {}
        self._verifications: list[Verification] = []

    # ----------------------------------------------------------------- reading

    def entry(self, key: str) -> Entry | None:
        """The active entry of a Pix key, or None."""
        return self._entries.get(key)

    def entry_by_cid(self, participant: str, key_type: str, cid: str) -> Entry | None:
        """The active entry of (participant, key type) whose CID is ``cid`` (any hex case), or None."""
        key = self._cid_index.get(cid.lower())
        entry = self._entries.get(key) if key is not None else None
        if entry is None or entry.participant != participant or entry.key_type != key_type:
            return None
        return entry

    def version(self, key: str) -> int:
        """The last version of a Pix key (0 when never seen); kept after a delete."""
        return self._versions.get(key, 0)

    def assume_ledger(self, ledger: VSyncLedger) -> None:
        """Answer verifications from ``ledger`` instead of the model's entries (benchmarks only).

        A model of tens of millions of entries does not fit in memory; ``benchmarks/bench_scale.py``
        gives the VSyncs of its generated export instead. CID files and events are not affected.
        """
        self._ledger = ledger

    def vsync(self, participant: str, key_type: str) -> str:
        """The DICT's VSync of (participant, key type): 64 lower-case hex chars, zeros when empty."""
        return _hex(self._ledger.vsync(participant, key_type))

    def count(self, participant: str, key_type: str) -> int:
        """The number of active entries of (participant, key type)."""
        return self._ledger.count(participant, key_type)

    def cids(self, participant: str, key_type: str) -> frozenset[str]:
        """The active CIDs of (participant, key type), lower-case hex (the content of a CID file)."""
        return frozenset(self._cids.get((participant, key_type), ()))

    def pairs(self) -> list[Pair]:
        """The (participant, key type) pairs with at least one active entry, sorted."""
        return sorted(pair for pair, cids in self._cids.items() if cids)

    def entries(self) -> list[Entry]:
        """All active entries (a copy, in insertion order)."""
        return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def cid_snapshot(self, participant: str, key_type: str) -> list[str]:
        """The active CIDs of (participant, key type) as a new list, in no order (for a CID file).

        Cheaper than :meth:`cids` for tens of millions of CIDs: a list of references, no hash table.
        """
        return list(self._cids.get((participant, key_type), ()))

    def now_ms(self) -> int:
        """The model's clock: epoch milliseconds, UTC."""
        return self._clock_ms()

    def cid_log(self, participant: str, key_type: str) -> list[CidLogEvent]:
        """The CID event log of (participant, key type), ascending by time (a copy)."""
        log = self._log.get((participant, key_type))
        return [log[i] for i in range(len(log))] if log else []

    def cid_log_page(self, participant: str, key_type: str, start_ms: int, end_ms: int | None,
                     limit: int) -> tuple[list[CidLogEvent], bool]:
        """A page of the CID event log, as the DICT's "list CID events" serves it.

        Args:
            participant: ISPB, 8 digits.
            key_type: one of the five key types.
            start_ms: inclusive lower bound, epoch milliseconds.
            end_ms: exclusive upper bound, epoch milliseconds; None for none.
            limit: at most this many events (>= 1).

        Returns:
            ``(events, has_more)``: the first ``limit`` events with ``start_ms <= timestamp <
            end_ms`` in log order, and whether more events of the range follow them.
        """
        log = self._log.get((participant, key_type))
        if log is None:
            return [], False
        first = log.first_at_or_after(start_ms)
        stop = len(log) if end_ms is None else max(first, log.first_at_or_after(end_ms))
        last = min(stop, first + limit)
        return [log[i] for i in range(first, last)], last < stop

    def verify(self, participant: str, key_type: str, vsync_hex: str) -> bool:
        """Compare a participant's VSync with the DICT's own, without recording anything.

        Args:
            participant: ISPB, 8 digits.
            key_type: ``CPF``, ``CNPJ``, ``PHONE``, ``EMAIL`` or ``EVP``.
            vsync_hex: 64 hex chars, any case.

        Returns:
            True when equal (the DICT would answer OK).
        """
        return vsync_hex.lower() == self.vsync(participant, key_type)

    def check_sync(self, participant: str, key_type: str, vsync_hex: str) -> Verification:
        """Answer a sync verification as the DICT does, and record it (see :meth:`verifications`).

        Returns:
            The recorded verification, with a fresh id and ``"OK"``/``"NOK"``.
        """
        result: Literal["OK", "NOK"] = "OK" if self.verify(participant, key_type, vsync_hex) else "NOK"
        record = Verification(str(uuid.uuid4()), participant, key_type, vsync_hex.lower(), result,
                              self._clock_ms())
        self._verifications.append(record)
        return record

    def verifications(self) -> list[Verification]:
        """Every verification answered so far, oldest first (a copy)."""
        return list(self._verifications)

    # ------------------------------------------------- mutations with an event

    def create(self, entry: Entry, reason: str = DEFAULT_REASON) -> KeyEvent:
        """Register a new entry (DESIGN 2.5: + CID at its participant and key type).

        Args:
            entry: the entry, with the RequestId of its create request. Not validated: the model
                holds whatever strings it is given, as the DICT does.
            reason: the event's reason.

        Returns:
            The ``key.created`` event.

        Raises:
            ValueError: the key is already active, or waiting for a claim to complete.
        """
        if entry.key in self._pending_claims:
            raise ValueError("the key is under a confirmed claim; complete the claim instead")
        self._insert(entry)
        return self._event("key.created", entry.key, entry.key_type, entry.participant, entry, reason)

    def update(self, key: str, /, reason: str = DEFAULT_REASON, **changes: Any) -> KeyEvent:
        """Change the account or names of an entry; the RequestId stays, the CID is recomputed.

        Args:
            key: the Pix key.
            reason: the event's reason.
            **changes: new values for fields in :data:`UPDATABLE_FIELDS` (``Entry`` field names).

        Returns:
            The ``key.updated`` event carrying the new entry.

        Raises:
            KeyError: the key is not active.
            ValueError: a change names a field the DICT does not let an update change.
        """
        bad = set(changes) - UPDATABLE_FIELDS
        if bad:
            raise ValueError(f"an update cannot change {sorted(bad)}; use a claim or tamper_update")
        new = self._replace(key, changes)
        return self._event("key.updated", key, new.key_type, new.participant, new, reason)

    def delete(self, key: str, reason: str = DEFAULT_REASON) -> KeyEvent:
        """Remove an entry (user request, account closure, fraud, reconciliation, …).

        Returns:
            The ``key.deleted`` event (no entry body, DESIGN 4.1).

        Raises:
            KeyError: the key is not active.
        """
        old = self._remove(key)
        return self._event("key.deleted", key, old.key_type, old.participant, None, reason)

    def confirm_claim(self, key: str, claim_type: str = "PORTABILITY") -> KeyEvent:
        """The donor confirms a claim: − CID at the donor; the key is in no set until completion.

        Args:
            key: the claimed Pix key.
            claim_type: ``PORTABILITY`` or ``OWNERSHIP`` (goes into the reason).

        Returns:
            The donor's ``key.deleted`` event, reason ``<claim_type>_CLAIM``.

        Raises:
            KeyError: the key is not active.
        """
        old = self._remove(key)
        self._pending_claims[key] = old
        return self._event("key.deleted", key, old.key_type, old.participant, None, f"{claim_type}_CLAIM")

    def complete_claim(self, key: str, claimer_entry: Entry, claim_type: str = "PORTABILITY") -> KeyEvent:
        """The claimer completes a confirmed claim: + CID at the claimer (DESIGN 2.3).

        Args:
            key: the claimed Pix key.
            claimer_entry: the entry at the claimer, with the RequestId of the complete-claim
                request (not the donor's).
            claim_type: ``PORTABILITY`` or ``OWNERSHIP`` (goes into the reason).

        Returns:
            The claimer's ``key.created`` event.

        Raises:
            KeyError: no confirmed claim waits for this key.
            ValueError: the claimer's entry is for another key or key type, or reuses the
                donor's RequestId.
        """
        donor = self._pending_claims.get(key)
        if donor is None:
            raise KeyError("no confirmed claim for this key")
        if claimer_entry.key != key or claimer_entry.key_type != donor.key_type:
            raise ValueError("the claimer's entry must have the claimed key and key type")
        if claimer_entry.request_id == donor.request_id:
            raise ValueError("the claimer's entry needs the RequestId of the complete-claim request")
        del self._pending_claims[key]
        self._insert(claimer_entry)
        return self._event("key.created", key, claimer_entry.key_type, claimer_entry.participant,
                           claimer_entry, f"{claim_type}_CLAIM")

    def claim(self, key: str, claimer_entry: Entry) -> tuple[KeyEvent, KeyEvent]:
        """Run a whole claim: donor confirmation, then claimer completion.

        The claim type is ``OWNERSHIP`` when the owner's tax id changes, else ``PORTABILITY``.

        Returns:
            ``(donor_delete_event, claimer_create_event)``.

        Raises:
            KeyError: the key is not active.
            ValueError: see :meth:`complete_claim`; the model is left unchanged.
        """
        donor = self._entries.get(key)
        if donor is None:
            raise KeyError("the claimed key is not active")
        if claimer_entry.key != key or claimer_entry.key_type != donor.key_type:
            raise ValueError("the claimer's entry must have the claimed key and key type")
        if claimer_entry.request_id == donor.request_id:
            raise ValueError("the claimer's entry needs the RequestId of the complete-claim request")
        claim_type = "PORTABILITY" if claimer_entry.owner_tax_id == donor.owner_tax_id else "OWNERSHIP"
        return self.confirm_claim(key, claim_type), self.complete_claim(key, claimer_entry, claim_type)

    # ------------------------------------------ mutations behind the participant's back

    def tamper_create(self, entry: Entry) -> str:
        """Insert an entry in the DICT without any event (the participant never hears of it).

        Returns:
            The new entry's CID. The CID log records it as ADDED.

        Raises:
            ValueError: the key is already active.
        """
        self._insert(entry)
        return entry.cid

    def tamper_update(self, key: str, /, **changes: Any) -> Entry:
        """Change any field of an entry except key and key type, without an event.

        Changing ``participant`` moves the CID to the other participant's set; changing
        ``request_id`` changes the CID even with the same attributes.

        Returns:
            The entry as the DICT now holds it.

        Raises:
            KeyError: the key is not active.
            ValueError: a change names the key, the key type or an unknown field.
        """
        bad = set(changes) & _IDENTITY_FIELDS
        if bad:
            raise ValueError(f"tamper_update cannot change {sorted(bad)}; delete and create instead")
        return self._replace(key, changes)

    def tamper_delete(self, key: str) -> Entry:
        """Remove an entry from the DICT without an event.

        Returns:
            The removed entry.

        Raises:
            KeyError: the key is not active.
        """
        return self._remove(key)

    # ----------------------------------------------------------------- internals

    def _insert(self, entry: Entry) -> None:
        if entry.key in self._entries:
            raise ValueError("the key is already active in the DICT")
        cid = entry.cid
        self._entries[entry.key] = entry
        self._cid_index[cid] = entry.key
        self._add_cid(entry.participant, entry.key_type, cid)

    def _remove(self, key: str) -> Entry:
        old = self._entries.pop(key, None)
        if old is None:
            raise KeyError("the key is not active in the DICT")
        cid = old.cid
        if self._cid_index.get(cid) == key:
            del self._cid_index[cid]
        self._remove_cid(old.participant, old.key_type, cid)
        return old

    def _replace(self, key: str, changes: dict[str, Any]) -> Entry:
        old = self._entries.get(key)
        if old is None:
            raise KeyError("the key is not active in the DICT")
        try:
            new = dataclasses.replace(old, **changes)
        except TypeError as exc:
            raise ValueError(f"unknown entry field in {sorted(changes)}") from exc
        old_cid, new_cid = old.cid, new.cid
        self._entries[key] = new
        if old_cid != new_cid:  # the participant is hashed, so moving it changes the CID too
            self._cid_index.pop(old_cid, None)
            self._cid_index[new_cid] = key
            self._remove_cid(old.participant, old.key_type, old_cid)
            self._add_cid(new.participant, new.key_type, new_cid)
        return new

    def _add_cid(self, participant: str, key_type: str, cid: str) -> None:
        self._cids.setdefault((participant, key_type), set()).add(cid)
        self._ledger.add(participant, key_type, cid)
        self._append_log(participant, key_type, cid, "ADDED")

    def _remove_cid(self, participant: str, key_type: str, cid: str) -> None:
        self._cids[(participant, key_type)].discard(cid)
        self._ledger.remove(participant, key_type, cid)
        self._append_log(participant, key_type, cid, "REMOVED")

    def _append_log(self, participant: str, key_type: str, cid: str, kind: CidEventType) -> None:
        log = self._log.get((participant, key_type))
        if log is None:
            log = self._log[(participant, key_type)] = CidLog()
        # A clock that steps back must not unsort the log: CidLog raises such a time to the last one.
        log.append(cid, kind, self._clock_ms(), self._ledger.vsync(participant, key_type))

    def _event(self, action: str, key: str, key_type: str, participant: str, entry: Entry | None,
               reason: str | None) -> KeyEvent:
        version = self._versions.get(key, 0) + 1
        self._versions[key] = version
        return KeyEvent(
            event_id=str(uuid.uuid4()),
            action=action,
            occurred_at_ms=self._clock_ms(),
            version=version,
            key=key,
            key_type=key_type,
            participant=participant,
            entry=entry,
            reason=reason,
        )
