"""Reconciliation decisions: from a divergence to the corrective events (BCB DICT API, "Sincronismo").

On NOK the participant finds the exact difference between its CIDs and the DICT's for one
(participant, key type) — from the DICT's CID event log (cheap path) or its CID file (full path) —
and corrects its own base. Here the corrections become key events that flow through the fold like
any other, so the fold stays the single writer of the entries table:

* a CID only at the DICT → fetch the entry by CID and upsert it (``add``);
* a CID only local → delete the key that holds it (``remove``); a local-only EVP is removed and
  never recreated (EVP keys are issued by the DICT only);
* a key on both sides with different CIDs → upsert the DICT's entry (``replace``); the fold XORs the
  local CID out because it reads it from the table.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from vsync_stream.domain.entry import Entry
from vsync_stream.domain.events import ABSENT, Expectation, KeyEvent
from vsync_stream.domain.fold import EntryState

RECONCILIATION_REASON = "RECONCILIATION"


class CorrectionKind(StrEnum):
    """What a correction does to the local base."""

    ADD = "add"
    REMOVE = "remove"
    REPLACE = "replace"


@dataclass(frozen=True, slots=True)
class Correction:
    """One change to the local base; ``entry`` is the DICT's entry (None for ``remove``)."""

    kind: CorrectionKind
    key: str
    key_type: str
    participant: str
    local_cid: str | None
    dict_cid: str | None
    entry: Entry | None


def net_cid_changes(events: Iterable[tuple[str, str]]) -> tuple[set[str], set[str]]:
    """Fold the DICT's CID event log into its final word per CID.

    Args:
        events: ``(cid, "ADDED" | "REMOVED")`` in ascending time order, deduplicated.

    Returns:
        ``(added, removed)``: CIDs whose last event is ADDED, and those whose last is REMOVED.
    """
    last: dict[str, str] = {}
    for cid, kind in events:
        last[cid.lower()] = kind
    added = {cid for cid, kind in last.items() if kind == "ADDED"}
    return added, set(last) - added


def plan_corrections(participant: str, key_type: str, only_dict: Mapping[str, Entry],
                     only_local: Mapping[str, str]) -> list[Correction]:
    """Turn the two sides of a difference into corrections, one per Pix key.

    Args:
        participant: the ISPB of the pair.
        key_type: the key type of the pair.
        only_dict: CID → the DICT's entry, for CIDs the DICT has and the local base lacks.
        only_local: CID → Pix key, for CIDs the local base has and the DICT lacks.

    Returns:
        Corrections sorted by key: ``replace`` where a key is on both sides, else ``add``/``remove``.
    """
    dict_by_key = {entry.key: (cid, entry) for cid, entry in only_dict.items()}
    local_by_key = {key: cid for cid, key in only_local.items()}
    corrections = []
    for key in sorted(dict_by_key.keys() | local_by_key.keys()):
        dict_side = dict_by_key.get(key)
        local_cid = local_by_key.get(key)
        if dict_side is None:
            corrections.append(Correction(CorrectionKind.REMOVE, key, key_type, participant, local_cid, None, None))
        else:
            kind = CorrectionKind.REPLACE if local_cid is not None else CorrectionKind.ADD
            corrections.append(Correction(kind, key, key_type, participant, local_cid, dict_side[0], dict_side[1]))
    return corrections


def expectation_of(stored: EntryState | None) -> Expectation:
    """What a correction judged against ``stored`` expects the row to still be (None: absent)."""
    if stored is None:
        return ABSENT
    return Expectation(stored.cid, stored.version, stored.occurred_at_ms, stored.event_id)


def changed_after(stored: EntryState | None, cut_ms: int) -> bool:
    """True when the row's last event occurred after the cut (epoch ms): a correction judged
    against the DICT's state at the cut must leave it alone (issue #14, item 1)."""
    return stored is not None and stored.occurred_at_ms > cut_ms


def corrective_event(correction: Correction, stored: EntryState | None, now_ms: int,
                     cut_ms: int | None = None) -> KeyEvent:
    """The key event that applies ``correction`` through the fold, conditional on ``stored``.

    The event carries ``stored`` as its expectation, so the fold applies it only while the row is
    still that one (a removal also checks participant and key type): an event folded meanwhile
    supersedes it. Its ordering token beats ``stored`` (same version, a later ``occurredAt``) while
    any later event of the DICT still beats it: an add or replace orders at ``now_ms`` (pass the
    moment the DICT's entry was fetched), a removal at ``cut_ms`` (when the DICT's set it was
    judged by was taken), so an event that occurred after those is never undone by it.

    Args:
        correction: the change to make.
        stored: the table's state of the key, if any, as read when the correction was judged.
        now_ms: when the DICT's entry was fetched (or the current time), epoch milliseconds UTC.
        cut_ms: the time of the DICT's CID set the removal was judged by (epoch ms); ``now_ms`` if None.
    """
    version = stored.version if stored is not None else None
    moment = now_ms if cut_ms is None or correction.kind is not CorrectionKind.REMOVE else cut_ms
    occurred = max(moment, stored.occurred_at_ms + 1) if stored is not None else moment
    expected = expectation_of(stored)
    if correction.kind is CorrectionKind.REMOVE:
        return KeyEvent(event_id=str(uuid.uuid4()), action="key.deleted", occurred_at_ms=occurred, version=version,
                        key=correction.key, key_type=correction.key_type, participant=correction.participant,
                        entry=None, reason=RECONCILIATION_REASON, expected=expected)
    assert correction.entry is not None
    action = "key.updated" if correction.kind is CorrectionKind.REPLACE else "key.created"
    return KeyEvent(event_id=str(uuid.uuid4()), action=action, occurred_at_ms=occurred, version=version,
                    key=correction.key, key_type=correction.key_type, participant=correction.participant,
                    entry=correction.entry, reason=RECONCILIATION_REASON, expected=expected)
