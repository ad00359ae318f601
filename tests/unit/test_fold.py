"""The pure fold: set semantics, stale events, tombstones, claims (DESIGN 2.5, 3.3)."""

import itertools
import random

import orjson

from tests.factories import event_doc
from vsync_stream.domain.events import KeyChange, change_of, validate_event_doc
from vsync_stream.domain.fold import EntryState, FoldStatus, fold
from vsync_stream.domain.vsync import VSyncLedger

P1, P2 = "12345678", "87654321"


def ev(action: str = "key.created", version: int | None = 1, participant: str = P1, account: str = "1",
       request_id: str = "01020304-0506-0708-090a-0b0c0d0e0f10", ms: int = 0) -> KeyChange:
    doc = event_doc(action=action, version=version, entry__account__participant=participant,
                    entry__account__accountNumber=account, entry__requestId=request_id,
                    occurredAt=f"2026-11-29T03:00:{ms // 1000:02d}.{ms % 1000:03d}Z")
    return change_of(validate_event_doc(doc))


def run(events: list[KeyChange]) -> tuple[EntryState | None, VSyncLedger, list[FoldStatus]]:
    state, ledger, statuses = None, VSyncLedger(), []
    for e in events:
        out = fold(state, e)
        statuses.append(out.status)
        if out.removed:
            ledger.remove(*out.removed)
        if out.added:
            ledger.add(*out.added)
        state = out.state
    return state, ledger, statuses


def expected(state: EntryState | None) -> VSyncLedger:
    ledger = VSyncLedger()
    if state is not None and state.cid is not None:
        ledger.add(state.participant, state.key_type, state.cid)
    return ledger


def test_duplicate_is_a_no_op() -> None:
    create = ev()
    state, ledger, statuses = run([create, create, create])
    assert statuses == [FoldStatus.APPLIED, FoldStatus.DUPLICATE, FoldStatus.DUPLICATE]
    assert ledger == expected(state) and ledger.count(P1, "PHONE") == 1


def test_update_xors_out_the_cid_the_table_holds() -> None:
    create, update = ev(version=1), ev("key.updated", version=2, account="2")
    state, ledger, _ = run([create, update])
    assert state is not None and state.cid == update.cid
    assert ledger == expected(state)


def test_stale_event_is_not_applied_and_tombstone_blocks_resurrection() -> None:
    create, delete = ev(version=1), ev("key.deleted", version=2)
    state, ledger, statuses = run([delete, create])
    assert statuses == [FoldStatus.APPLIED, FoldStatus.STALE]
    assert state is not None and state.cid is None
    assert ledger.count(P1, "PHONE") == 0 and ledger.vsync(P1, "PHONE") == 0


def test_claim_ends_right_in_either_order() -> None:
    donor_create = ev(version=1, participant=P1)
    donor_delete = ev("key.deleted", version=2, participant=P1)
    claimer_create = ev(version=3, participant=P2, request_id="11111111-2222-4333-8444-555555555555")
    for order in ([donor_create, donor_delete, claimer_create], [donor_create, claimer_create, donor_delete]):
        state, ledger, _ = run(order)
        assert ledger == expected(state)
        assert ledger.count(P1, "PHONE") == 0 and ledger.count(P2, "PHONE") == 1


def test_same_cid_added_removed_added_again() -> None:
    events = [ev(version=1), ev("key.deleted", version=2), ev(version=3)]
    state, ledger, _ = run(events)
    assert ledger == expected(state) and ledger.count(P1, "PHONE") == 1
    assert state is not None and state.cid == events[0].cid


def test_any_arrival_order_and_any_replay_gives_the_in_order_state() -> None:
    history = [ev(version=1), ev("key.updated", version=2, account="2"), ev("key.deleted", version=3),
               ev(version=4, account="9"), ev("key.updated", version=5, account="10")]
    reference, ref_ledger, _ = run(history)
    rng = random.Random(7)
    for perm in itertools.islice(itertools.permutations(history), 0, 120):
        replayed = list(perm) + rng.sample(history, 3)
        state, ledger, _ = run(replayed)
        assert state == reference and ledger == ref_ledger


def test_events_without_version_are_ordered_by_occurred_at() -> None:
    a, b = ev(version=None, ms=100), ev("key.deleted", version=None, ms=200)
    assert run([b, a])[0] == run([a, b])[0]


def test_entry_state_encoding_round_trips() -> None:
    state = fold(None, ev()).state
    assert state is not None
    assert EntryState.decode(state.encode()) == state
    tomb = state._replace(cid=None, request_id=None, version=None)
    assert EntryState.decode(tomb.encode()) == tomb
    assert isinstance(orjson.loads(state.encode()), list)


def test_corrective_events_beat_the_table_but_not_later_dict_events() -> None:
    from vsync_stream.domain.reconcile import Correction, CorrectionKind, corrective_event, plan_corrections

    create = ev(version=7, ms=500)
    entry = validate_event_doc(event_doc()).entry
    stored = fold(None, create).state
    assert stored is not None and entry is not None
    remove = Correction(CorrectionKind.REMOVE, create.key, "PHONE", P1, stored.cid, None, None)
    fix = change_of(corrective_event(remove, stored, now_ms=100))  # a clock behind the event still wins
    assert fold(stored, fix).status is FoldStatus.APPLIED and fold(stored, fix).removed == (P1, "PHONE", stored.cid)
    later = ev("key.updated", version=8, account="5", ms=0)
    assert fold(fold(stored, fix).state, later).status is FoldStatus.APPLIED

    plan = plan_corrections(P1, "PHONE", {"c1": entry}, {"c0": create.key, "c9": "+5511900000000"})
    assert [(c.kind, c.key) for c in plan] == [(CorrectionKind.REMOVE, "+5511900000000"),
                                                (CorrectionKind.REPLACE, create.key)]


def test_net_cid_changes_keeps_the_last_word_per_cid() -> None:
    from vsync_stream.domain.reconcile import net_cid_changes

    added, removed = net_cid_changes([("A", "ADDED"), ("b", "ADDED"), ("a", "REMOVED"), ("c", "REMOVED"),
                                      ("c", "ADDED")])
    assert added == {"b", "c"} and removed == {"a"}
