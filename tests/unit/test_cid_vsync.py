"""CID and VSync against BCB's official vectors (tests/data/official.json, from shared/vectors)."""

import hmac
import json
from hashlib import sha256
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.factories import official_vectors
from vsync_stream.domain.cid import cid_of, compute_cid, entry_attributes, normalise_cid, request_id_bytes
from vsync_stream.domain.entry import Entry
from vsync_stream.domain.vsync import EMPTY_VSYNC, VSyncLedger, vsync_hex, xor_cids

VECTORS = official_vectors()


def _entry(raw: dict, request_id: str) -> Entry:
    return Entry.from_json({**raw, "requestId": request_id, "owner": {"type": "NATURAL_PERSON", **raw["owner"]}})


@pytest.mark.parametrize("case", VECTORS["cid"])
def test_official_cid(case: dict) -> None:
    entry = _entry(case["entry"], case["request_id"])
    assert entry_attributes(entry) == case["entry_attributes"]
    assert compute_cid(entry) == case["cid"]
    assert cid_of(request_id_bytes(case["request_id"]), case["entry_attributes"]) == case["cid"]


SHARED_VECTORS = Path("/work/shared/vectors/official.json")


def test_official_cid_of_the_shared_vectors_file() -> None:
    """The copy in shared/vectors (the peers' reference) when present, else the repo's own copy."""
    path = SHARED_VECTORS if SHARED_VECTORS.exists() else Path(__file__).parents[1] / "data" / "official.json"
    cases = json.loads(path.read_text("utf-8"))["cid"]
    assert cases
    for case in cases:
        assert compute_cid(_entry(case["entry"], case["request_id"])) == case["cid"]


@given(key=st.binary(min_size=0, max_size=64), attributes=st.text(max_size=300))
def test_cid_of_is_hmac_sha256(key: bytes, attributes: str) -> None:
    # cid_of spells HMAC out over hashlib (cheaper than hmac.digest); it must be RFC 2104 exactly.
    assert cid_of(key, attributes) == hmac.new(key, attributes.encode("utf-8"), sha256).hexdigest()


def test_cid_of_refuses_a_key_longer_than_the_block() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        cid_of(bytes(65), "x")


def test_request_id_uses_rfc4122_bytes_not_le_or_text() -> None:
    assert request_id_bytes("01020304-0506-0708-090a-0b0c0d0e0f10") == bytes(range(1, 17))


@pytest.mark.parametrize("case", VECTORS["vsync"])
def test_official_vsync(case: dict) -> None:
    assert xor_cids(case["cids"]) == case["vsync"]
    assert xor_cids(c.upper() for c in case["cids"]) == case["vsync"]


def test_empty_vsync_is_64_zeros() -> None:
    assert xor_cids([]) == EMPTY_VSYNC == "0" * 64
    assert vsync_hex(1) == "0" * 63 + "1"


def test_cid_is_sensitive_to_every_hashed_field_and_absent_values_are_empty() -> None:
    case = VECTORS["cid"][0]
    base = _entry(case["entry"], case["request_id"])
    assert "&&" in entry_attributes(base)  # absent trade name
    from dataclasses import replace
    for field, value in [("key", "+5511987654322"), ("owner_name", "Joao Silva"), ("branch", "0001"),
                         ("account_number", "7654321"), ("owner_trade_name", "X"), ("participant", "12345679")]:
        assert compute_cid(replace(base, **{field: value})) != case["cid"], field
    # fields outside the CID do not change it
    assert compute_cid(replace(base, opening_date="2020-01-01", owner_type="LEGAL_PERSON")) == case["cid"]


def test_names_are_hashed_as_given_without_normalisation() -> None:
    import unicodedata
    from dataclasses import replace
    case = VECTORS["cid"][0]
    base = _entry(case["entry"], case["request_id"])
    nfd = replace(base, owner_name=unicodedata.normalize("NFD", base.owner_name))
    assert compute_cid(nfd) != case["cid"]
    amp = replace(base, owner_name="A&B")
    assert entry_attributes(amp).count("&") == 9


def test_normalise_cid_accepts_upper_case_and_rejects_garbage() -> None:
    cid = VECTORS["cid"][0]["cid"]
    assert normalise_cid(cid.upper()) == cid
    for bad in ["", cid[:-1], cid + "0", "g" * 64, "+" + cid[1:], "_" + cid[1:], "0x" + cid[2:], " " + cid[1:]]:
        with pytest.raises(ValueError):
            normalise_cid(bad)


def test_ledger_add_remove_merge() -> None:
    cids = VECTORS["vsync"][0]["cids"]
    ledger = VSyncLedger()
    for cid in cids:
        ledger.add("12345678", "PHONE", cid)
    assert vsync_hex(ledger.vsync("12345678", "PHONE")) == VECTORS["vsync"][0]["vsync"]
    assert ledger.count("12345678", "PHONE") == 3
    other = VSyncLedger()
    other.remove("12345678", "PHONE", cids[0])
    ledger.merge(other)
    assert vsync_hex(ledger.vsync("12345678", "PHONE")) == xor_cids(cids[1:])
    assert ledger.count("12345678", "PHONE") == 2
    assert ledger.vsync("12345678", "EVP") == 0
