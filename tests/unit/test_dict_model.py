"""The DICT simulator's model: exact VSync arithmetic, events per mutation, tampering without events."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterator

import pytest

from tests.factories import OFFICIAL_VECTORS_PATH
from vsync_stream.domain.entry import Entry
from vsync_stream.domain.events import KeyEvent, change_of, event_to_json, validate_event_doc
from vsync_stream.domain.fold import EntryState, fold
from vsync_stream.domain.vsync import EMPTY_VSYNC, VSyncLedger, vsync_hex, xor_cids
from vsync_stream.simulator.model import DictModel
from vsync_stream.simulator.population import PopulationGenerator, random_update_changes

VECTORS = OFFICIAL_VECTORS_PATH
P1, P2 = "12345678", "00000208"


class StepClock:
    """A clock that advances 1 ms per reading, starting at a fixed epoch ms."""

    def __init__(self, start_ms: int = 1_764_000_000_000) -> None:
        self.now = start_ms

    def __call__(self) -> int:
        self.now += 1
        return self.now


@pytest.fixture
def clock() -> StepClock:
    return StepClock()


@pytest.fixture
def model(clock: StepClock) -> DictModel:
    return DictModel(clock_ms=clock)


@pytest.fixture
def population() -> PopulationGenerator:
    return PopulationGenerator([P1, P2], seed=5)


def expected_vsync(model: DictModel, participant: str, key_type: str) -> str:
    return xor_cids(e.cid for e in model.entries() if (e.participant, e.key_type) == (participant, key_type))


def assert_consistent(model: DictModel) -> None:
    """Every pair's VSync and count equal a recomputation from the active entries (invariant I1)."""
    pairs = {(e.participant, e.key_type) for e in model.entries()} | set(model.pairs())
    for participant, key_type in pairs:
        assert model.vsync(participant, key_type) == expected_vsync(model, participant, key_type)
        active = [e for e in model.entries() if (e.participant, e.key_type) == (participant, key_type)]
        assert model.count(participant, key_type) == len(active)
        assert model.cids(participant, key_type) == {e.cid for e in active}


def assert_valid(event: KeyEvent) -> None:
    decoded = validate_event_doc(event_to_json(event))
    assert decoded == event


# ----------------------------------------------------------------- official vectors


def official_entry() -> Entry:
    vector = json.loads(VECTORS.read_text("utf-8"))["cid"][0]
    doc = dict(vector["entry"], requestId=vector["request_id"])
    doc["owner"] = dict(doc["owner"], type="NATURAL_PERSON")
    return Entry.from_json(doc)


def test_official_cid_vector_through_the_model(model: DictModel) -> None:
    vectors = json.loads(VECTORS.read_text("utf-8"))
    entry = official_entry()
    assert model.vsync(P1, "PHONE") == EMPTY_VSYNC == vectors["vsync"][1]["vsync"]
    model.create(entry)
    assert model.vsync(P1, "PHONE") == vectors["cid"][0]["cid"]
    assert model.verify(P1, "PHONE", vectors["cid"][0]["cid"].upper())


def test_official_vsync_vector_through_the_model(model: DictModel) -> None:
    vector = json.loads(VECTORS.read_text("utf-8"))["vsync"][0]
    model.create(official_entry())  # contributes the vector's first CID
    assert vector["cids"][0] == model.vsync(P1, "PHONE")
    assert xor_cids([model.vsync(P1, "PHONE"), *vector["cids"][1:]]) == vector["vsync"]
    model.delete(official_entry().key)
    assert model.vsync(P1, "PHONE") == EMPTY_VSYNC == json.loads(VECTORS.read_text("utf-8"))["vsync"][1]["vsync"]


# ----------------------------------------------------------------- mutations with events


def test_create_adds_exactly_the_cid(model: DictModel, population: PopulationGenerator) -> None:
    entry = population.entry(key_type="EVP", participant=P1)
    event = model.create(entry)
    assert model.vsync(P1, "EVP") == entry.cid and model.count(P1, "EVP") == 1
    assert (event.action, event.key, event.entry, event.version) == ("key.created", entry.key, entry, 1)
    assert_valid(event)
    with pytest.raises(ValueError):
        model.create(entry)


def test_update_swaps_the_cid_with_the_same_request_id(model: DictModel, population: PopulationGenerator) -> None:
    entry = population.entry(key_type="PHONE", participant=P1)
    other = population.entry(key_type="PHONE", participant=P1)
    model.create(entry)
    model.create(other)
    before = int(model.vsync(P1, "PHONE"), 16)
    event = model.update(entry.key, account_number="123456", branch=None)
    assert event.entry is not None
    new = event.entry
    assert new.request_id == entry.request_id and new.cid != entry.cid
    assert model.vsync(P1, "PHONE") == vsync_hex(before ^ int(entry.cid, 16) ^ int(new.cid, 16))
    assert (event.action, event.version) == ("key.updated", 2)
    assert_valid(event)
    assert_consistent(model)


def test_update_of_unhashed_field_keeps_the_cid(model: DictModel, population: PopulationGenerator) -> None:
    entry = population.entry()
    model.create(entry)
    before = model.vsync(entry.participant, entry.key_type)
    event = model.update(entry.key, opening_date="2001-02-03T03:00:00Z")
    assert event.entry is not None and event.entry.cid == entry.cid
    assert model.vsync(entry.participant, entry.key_type) == before


def test_update_refuses_claim_fields_and_unknown_keys(model: DictModel, population: PopulationGenerator) -> None:
    entry = population.entry()
    model.create(entry)
    for field in ("participant", "owner_tax_id", "request_id", "key"):
        with pytest.raises(ValueError):
            model.update(entry.key, **{field: "x"})
    with pytest.raises(KeyError):
        model.update("+5511999999999", account_number="1")
    with pytest.raises(KeyError):
        model.delete("+5511999999999")


def test_delete_removes_the_cid(model: DictModel, population: PopulationGenerator) -> None:
    entry = population.entry(key_type="CPF", participant=P2)
    model.create(entry)
    event = model.delete(entry.key, reason="ACCOUNT_CLOSURE")
    assert model.vsync(P2, "CPF") == EMPTY_VSYNC and model.count(P2, "CPF") == 0
    assert (event.action, event.entry, event.participant, event.key_type) == ("key.deleted", None, P2, "CPF")
    assert (event.reason, event.version) == ("ACCOUNT_CLOSURE", 2)
    assert_valid(event)
    assert model.pairs() == []


def test_versions_never_go_back_across_delete_and_recreate(model: DictModel, population: PopulationGenerator) -> None:
    entry = population.entry()
    versions = [model.create(entry).version, model.delete(entry.key).version]
    again = dataclasses.replace(entry, request_id="0f1e2d3c-4b5a-4978-8877-665544332211")
    versions.append(model.create(again).version)
    assert versions == [1, 2, 3] and model.version(entry.key) == 3


def test_events_carry_the_injected_clock(clock: StepClock, model: DictModel, population: PopulationGenerator) -> None:
    event = model.create(population.entry())
    assert event.occurred_at_ms == clock.now
    assert event_to_json(event)["occurredAt"].endswith("Z")


def test_claim_moves_the_cid_from_donor_to_claimer(model: DictModel, population: PopulationGenerator) -> None:
    donor = population.entry(key_type="PHONE", participant=P1)
    model.create(donor)
    claimer = dataclasses.replace(donor, participant=P2, request_id="a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
                                  branch="0042", account_number="99887766")
    delete, create = model.claim(donor.key, claimer)
    assert (delete.action, delete.participant, delete.reason) == ("key.deleted", P1, "PORTABILITY_CLAIM")
    assert (create.action, create.participant, create.entry) == ("key.created", P2, claimer)
    assert (delete.version, create.version) == (2, 3)
    assert model.vsync(P1, "PHONE") == EMPTY_VSYNC and model.vsync(P2, "PHONE") == claimer.cid
    assert claimer.cid != dataclasses.replace(claimer, request_id=donor.request_id).cid
    for event in (delete, create):
        assert_valid(event)


def test_between_confirmation_and_completion_the_key_is_in_no_set(
        model: DictModel, population: PopulationGenerator) -> None:
    donor = population.entry(key_type="EMAIL", participant=P1)
    model.create(donor)
    claimer = dataclasses.replace(donor, participant=P2, owner_tax_id="52998224725", owner_name="Inês Simões",
                                  request_id="a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d")
    model.confirm_claim(donor.key, "OWNERSHIP")
    assert model.count(P1, "EMAIL") == model.count(P2, "EMAIL") == 0 and model.entry(donor.key) is None
    with pytest.raises(ValueError):
        model.create(claimer)
    with pytest.raises(ValueError):
        model.complete_claim(donor.key, dataclasses.replace(claimer, request_id=donor.request_id))
    event = model.complete_claim(donor.key, claimer, "OWNERSHIP")
    assert event.reason == "OWNERSHIP_CLAIM" and model.vsync(P2, "EMAIL") == claimer.cid
    with pytest.raises(KeyError):
        model.complete_claim(donor.key, claimer)


def test_claim_refuses_bad_claimer_entries_without_changing_anything(
        model: DictModel, population: PopulationGenerator) -> None:
    donor = population.entry(participant=P1)
    model.create(donor)
    with pytest.raises(ValueError):
        model.claim(donor.key, dataclasses.replace(donor, participant=P2))  # same RequestId
    with pytest.raises(ValueError):
        model.claim(donor.key, population.entry(participant=P2))  # another key
    assert model.entry(donor.key) == donor and model.version(donor.key) == 1


# ----------------------------------------------------------------- tampering


def test_tampering_changes_state_without_events(model: DictModel, population: PopulationGenerator) -> None:
    a, b, c = (population.entry(key_type="EVP", participant=P1) for _ in range(3))
    model.create(a)
    model.create(b)
    synced = model.vsync(P1, "EVP")
    changed = model.tamper_update(a.key, account_number="42")
    assert not isinstance(changed, KeyEvent) and changed.account_number == "42"
    assert model.vsync(P1, "EVP") != synced and not model.verify(P1, "EVP", synced)
    assert model.version(a.key) == 1, "no event, so no new version"
    assert model.tamper_create(c) == c.cid
    removed = model.tamper_delete(b.key)
    assert removed == b and model.entry(b.key) is None
    assert_consistent(model)
    moved = model.tamper_update(c.key, participant=P2)
    assert model.cids(P2, "EVP") == {moved.cid} and c.cid not in model.cids(P1, "EVP")
    with pytest.raises(ValueError):
        model.tamper_update(c.key, key_type="CPF")
    with pytest.raises(ValueError):
        model.tamper_update(c.key, no_such_field="x")
    assert_consistent(model)


def test_cid_log_records_every_change_with_the_vsync_after(
        model: DictModel, population: PopulationGenerator) -> None:
    a, b = population.entry(key_type="CPF", participant=P1), population.entry(key_type="CPF", participant=P1)
    model.create(a)
    model.tamper_create(b)
    model.update(a.key, account_number="7")
    model.tamper_delete(b.key)
    log = model.cid_log(P1, "CPF")
    assert [e.type for e in log] == ["ADDED", "ADDED", "REMOVED", "ADDED", "REMOVED"]
    assert [e.cid for e in log][:3] == [a.cid, b.cid, a.cid]
    assert [e.timestamp_ms for e in log] == sorted(e.timestamp_ms for e in log)
    replay = 0
    for event in log:
        replay ^= int(event.cid, 16)
        assert event.vsync_after == vsync_hex(replay)
    assert log[-1].vsync_after == model.vsync(P1, "CPF")


def test_entry_by_cid(model: DictModel, population: PopulationGenerator) -> None:
    entry = population.entry(key_type="PHONE", participant=P1)
    model.create(entry)
    assert model.entry_by_cid(P1, "PHONE", entry.cid.upper()) == entry
    assert model.entry_by_cid(P2, "PHONE", entry.cid) is None
    assert model.entry_by_cid(P1, "EVP", entry.cid) is None


def test_check_sync_records_verifications(model: DictModel, population: PopulationGenerator) -> None:
    entry = population.entry(key_type="EVP", participant=P1)
    model.create(entry)
    assert model.verify(P1, "EVP", entry.cid) and model.verifications() == []
    ok = model.check_sync(P1, "EVP", entry.cid)
    nok = model.check_sync(P1, "EVP", EMPTY_VSYNC)
    assert (ok.result, nok.result) == ("OK", "NOK") and ok.verification_id != nok.verification_id
    assert model.verifications() == [ok, nok]


# ----------------------------------------------------------------- agreement with the fold


def random_history(model: DictModel, population: PopulationGenerator, rng: random.Random) -> Iterator[KeyEvent]:
    """Creates, updates, deletes and claims in a random mix; yields the connector's events."""
    for _ in range(300):
        yield model.create(population.entry())
    for _ in range(600):
        keys = [e.key for e in model.entries()]
        draw = rng.random()
        key = rng.choice(keys)
        current = model.entry(key)
        assert current is not None
        if draw < 0.5:
            yield model.update(key, **random_update_changes(current, rng))
        elif draw < 0.7:
            yield model.delete(key)
        elif draw < 0.85:
            yield model.create(population.entry())
        else:
            claimer = dataclasses.replace(current, participant=rng.choice([P1, P2]),
                                          request_id=str(population.entry().request_id))
            yield from model.claim(key, claimer)


def test_folding_the_models_events_reproduces_the_dicts_vsyncs(
        model: DictModel, population: PopulationGenerator) -> None:
    table: dict[str, EntryState] = {}
    ledger = VSyncLedger()
    for event in random_history(model, population, random.Random(11)):
        outcome = fold(table.get(event.key), change_of(event))
        assert outcome.state is not None
        table[event.key] = outcome.state
        if outcome.removed:
            ledger.remove(*outcome.removed)
        if outcome.added:
            ledger.add(*outcome.added)
    assert_consistent(model)
    for participant, key_type in model.pairs():
        assert vsync_hex(ledger.vsync(participant, key_type)) == model.vsync(participant, key_type)
        assert ledger.count(participant, key_type) == model.count(participant, key_type)
