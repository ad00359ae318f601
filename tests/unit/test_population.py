"""The simulator's population generator: valid, unique, realistic, deterministic entries."""

from __future__ import annotations

import random
import re
import unicodedata
import uuid
from collections import Counter

import pytest

from vsync_stream.domain.entry import Entry
from vsync_stream.domain.events import KeyEvent, event_to_json, validate_event_doc
from vsync_stream.domain.keys import cnpj_is_valid, cpf_is_valid
from vsync_stream.simulator.model import DictModel
from vsync_stream.simulator.population import DDDS, PopulationGenerator, generate_entries, random_update_changes

PARTICIPANTS = ["12345678", "00000208", "60701190"]
N = 10_000


@pytest.fixture(scope="module")
def entries() -> list[Entry]:
    return list(generate_entries(N, PARTICIPANTS, seed=42))


def created(entry: Entry) -> KeyEvent:
    return KeyEvent(str(uuid.uuid4()), "key.created", 1_764_000_000_000, 1, entry.key, entry.key_type,
                    entry.participant, entry)


def test_every_entry_passes_the_event_contract(entries: list[Entry]) -> None:
    for entry in entries:
        event = validate_event_doc(event_to_json(created(entry)))
        assert event.entry == entry


def test_keys_are_unique(entries: list[Entry]) -> None:
    assert len({e.key for e in entries}) == N


def test_same_seed_same_entries_other_seed_other_entries(entries: list[Entry]) -> None:
    assert list(generate_entries(200, PARTICIPANTS, seed=42)) == entries[:200]
    assert list(generate_entries(200, PARTICIPANTS, seed=43)) != entries[:200]


def test_key_types_follow_bcb_proportions(entries: list[Entry]) -> None:
    share = {kind: n / N for kind, n in Counter(e.key_type for e in entries).items()}
    assert share["EVP"] == pytest.approx(0.48, abs=0.02)
    assert share["PHONE"] == pytest.approx(0.18, abs=0.015)
    assert share["CPF"] == pytest.approx(0.17, abs=0.015)
    assert share["EMAIL"] == pytest.approx(0.10, abs=0.01)
    assert share["CNPJ"] == pytest.approx(0.06, abs=0.01)


def test_keys_have_the_right_format_and_owner(entries: list[Entry]) -> None:
    phone = re.compile(r"\+55(\d{2})9\d{8}")
    evp = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
    for e in entries:
        if e.key_type == "CPF":
            assert cpf_is_valid(e.key) and e.owner_type == "NATURAL_PERSON" and e.owner_tax_id == e.key
        elif e.key_type == "CNPJ":
            assert cnpj_is_valid(e.key) and e.owner_type == "LEGAL_PERSON" and e.owner_tax_id == e.key
        elif e.key_type == "PHONE":
            match = phone.fullmatch(e.key)
            assert match and int(match.group(1)) in DDDS
        elif e.key_type == "EMAIL":
            assert e.key == e.key.lower() and len(e.key) <= 77 and "@" in e.key
        else:
            assert evp.fullmatch(e.key)
        uuid.UUID(e.request_id)
        assert e.request_id == e.request_id.lower()


def test_owners_are_consistent(entries: list[Entry]) -> None:
    for e in entries:
        if e.owner_type == "NATURAL_PERSON":
            assert cpf_is_valid(e.owner_tax_id) and e.owner_trade_name is None
        else:
            assert cnpj_is_valid(e.owner_tax_id)
        assert e.owner_name == unicodedata.normalize("NFC", e.owner_name) and 0 < len(e.owner_name) <= 120
    legal = [e for e in entries if e.owner_type == "LEGAL_PERSON"]
    assert any(e.owner_trade_name for e in legal) and any(e.owner_trade_name is None for e in legal)
    assert sum(not e.owner_name.isascii() for e in entries) > N // 4, "names should carry accents"
    owners = Counter(e.owner_tax_id for e in entries)
    assert max(owners.values()) > 1, "some owners hold several keys"


def test_accounts_are_realistic(entries: list[Entry]) -> None:
    for e in entries:
        assert e.branch is None or re.fullmatch(r"\d{4}", e.branch)
        assert re.fullmatch(r"\d{1,20}", e.account_number)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", e.opening_date or "")
    assert {e.account_type for e in entries} == {"CACC", "SVGS", "SLRY", "TRAN"}
    assert any(e.branch is None for e in entries)
    assert Counter(e.participant for e in entries).keys() == set(PARTICIPANTS)


def test_generator_keeps_keys_unique_across_calls() -> None:
    generator = PopulationGenerator(["12345678"], seed=1)
    first = [generator.entry() for _ in range(500)]
    extra = [generator.entry(key_type="EMAIL", participant="12345678") for _ in range(500)]
    assert len({e.key for e in first + extra}) == 1000 == len(generator)
    assert {e.key_type for e in extra} == {"EMAIL"}


@pytest.mark.parametrize("participants", [[], ["1234567"], ["abcdefgh"], [12345678]])
def test_bad_participants_are_rejected(participants: list[str]) -> None:
    with pytest.raises(ValueError):
        PopulationGenerator(participants)


def test_update_changes_make_valid_events_and_mostly_new_cids(entries: list[Entry]) -> None:
    model = DictModel()
    for entry in entries[:2000]:
        model.create(entry)
    rng = random.Random(7)
    same_cid = 0
    for entry in entries[:2000]:
        before = model.entry(entry.key)
        assert before is not None
        changes = random_update_changes(before, rng)
        assert changes
        event = model.update(entry.key, **changes)
        assert validate_event_doc(event_to_json(event)).entry == event.entry
        assert event.entry is not None and event.entry.request_id == before.request_id
        same_cid += event.entry.cid == before.cid
    assert 0 < same_cid < 600, "a few updates (opening date only) keep the CID"
