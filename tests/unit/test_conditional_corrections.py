"""Conditional corrections (issue #14, item 2): a correction applies only while the row is what it expects."""

from __future__ import annotations

import pytest

from tests.unit.test_fold import P1, P2, ev
from vsync_stream.domain.events import (
    ABSENT,
    Expectation,
    KeyChange,
    decode_change,
    decode_event,
    encode_change,
    encode_event,
)
from vsync_stream.domain.fold import EntryState, FoldStatus, fold
from vsync_stream.domain.reconcile import Correction, CorrectionKind, corrective_event
from vsync_stream.errors import InvalidEvent


def seen(state: EntryState | None) -> Expectation:
    if state is None:
        return ABSENT
    return Expectation(state.cid, state.version, state.occurred_at_ms, state.event_id)


def conditional(change: KeyChange, expected: Expectation) -> KeyChange:
    return change._replace(expected=expected)


def test_a_correction_built_from_an_older_read_does_not_beat_a_newer_update() -> None:
    created = fold(None, ev(version=1, ms=1000)).state
    assert created is not None
    # The reconciler reads the row, then fetches the DICT's entry for minutes; an update folds meanwhile.
    expected = seen(created)
    updated = fold(created, ev("key.updated", version=2, account="2", ms=2000)).state
    assert updated is not None
    correction = conditional(ev("key.updated", version=1, account="3", ms=9000), expected)
    out = fold(updated, correction)
    assert out.status is FoldStatus.SUPERSEDED and out.state == updated
    assert out.removed is None and out.added is None
    # Had nothing changed, the same correction applies.
    assert fold(created, correction).status is FoldStatus.APPLIED


def test_a_removal_checks_cid_and_participant() -> None:
    created = fold(None, ev(version=1, ms=1000)).state
    assert created is not None
    remove = conditional(ev("key.deleted", version=1, ms=5000), seen(created))
    assert fold(created, remove).status is FoldStatus.APPLIED
    other_cid = created._replace(cid="f" * 64)
    assert fold(other_cid, remove).status is FoldStatus.SUPERSEDED
    moved = created._replace(participant=P2)  # same token, but the key belongs to another pair now
    assert fold(moved, remove).status is FoldStatus.SUPERSEDED


def test_absent_means_no_row_at_all() -> None:
    add = conditional(ev(version=None, ms=5000), ABSENT)
    assert fold(None, add).status is FoldStatus.APPLIED
    tombstone = fold(fold(None, ev(version=1, ms=1000)).state, ev("key.deleted", version=2, ms=2000)).state
    assert fold(tombstone, add).status is FoldStatus.SUPERSEDED  # created and deleted since the read


def test_a_replayed_correction_is_a_duplicate_not_superseded() -> None:
    created = fold(None, ev(version=1, ms=1000)).state
    correction = conditional(ev("key.updated", version=1, account="3", ms=9000), seen(created))
    applied = fold(created, correction)
    assert applied.status is FoldStatus.APPLIED
    assert fold(applied.state, correction).status is FoldStatus.DUPLICATE


@pytest.mark.parametrize("expected", [None, ABSENT, Expectation("a" * 64, 3, 1_700_000_000_000, "e1"),
                                      Expectation(None, None, 1_700_000_000_000, "e2")])
def test_compact_record_round_trips_the_expectation(expected: Expectation | None) -> None:
    change = conditional(ev("key.updated", version=2), expected) if expected else ev("key.updated", version=2)
    record = encode_change(change)
    assert decode_change(record) == change
    assert record.count(b",") >= 10


def test_unconditional_records_keep_the_eleven_field_format() -> None:
    import orjson

    assert len(orjson.loads(encode_change(ev()))) == 11


@pytest.mark.parametrize("bad", [b'"x"', b"[1, 2]", b'[null, null, 5, null]', b'["zz", null, 1, "e"]',
                                 b'[null, "1", 1, "e"]', b'[null, null, "1", "e"]'])
def test_a_malformed_expectation_is_a_malformed_record(bad: bytes) -> None:
    record = encode_change(ev())[:-1] + b"," + bad + b"]"
    with pytest.raises(InvalidEvent) as info:
        decode_change(record)
    assert info.value.code == "malformed_record"


def test_contract_event_carries_the_expectation() -> None:
    from dataclasses import replace

    from tests.factories import event_doc
    from vsync_stream.domain.events import validate_event_doc

    event = validate_event_doc(event_doc(action="key.updated", version=2))
    for expected in (ABSENT, Expectation("b" * 64, 1, 1_700_000_000_000, "abc")):
        back = decode_event(encode_event(replace(event, expected=expected)))
        assert back.expected == expected
    doc = event_doc(action="key.updated", version=2)
    doc["expected"] = {"cid": "B" * 64, "eventId": "x", "occurredAtMs": 1}  # upper-case hex is not a stored CID
    with pytest.raises(InvalidEvent):
        validate_event_doc(doc)


def test_corrective_event_expects_the_row_it_was_judged_against() -> None:
    created = fold(None, ev(version=4, ms=1000)).state
    assert created is not None
    remove = Correction(CorrectionKind.REMOVE, "k", "PHONE", P1, created.cid, None, None)
    cut, now = created.occurred_at_ms + 20_000, created.occurred_at_ms + 50_000
    event = corrective_event(remove, created, now_ms=now, cut_ms=cut)
    assert event.expected == seen(created)
    # A removal justified by the DICT's file at the cut orders at the cut: any later event beats it.
    assert event.occurred_at_ms == cut and event.version == 4
    assert corrective_event(remove, None, now_ms=now, cut_ms=cut).expected == ABSENT
