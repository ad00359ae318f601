"""Key validation and the event decoder: every rejection has its own code and a clear reason."""

import orjson
import pytest

from tests.factories import event_doc
from vsync_stream.domain.events import decode_event, encode_event
from vsync_stream.domain.keys import KeyType, cnpj_is_valid, cpf_is_valid, key_problem
from vsync_stream.errors import InvalidEvent


def test_cpf_and_cnpj_check_digits() -> None:
    assert cpf_is_valid("52998224725")
    assert not cpf_is_valid("52998224724")
    assert not cpf_is_valid("11111111111")
    assert not cpf_is_valid("5299822472")
    assert cnpj_is_valid("11222333000181")
    assert not cnpj_is_valid("11222333000182")
    assert not cnpj_is_valid("00000000000000")


@pytest.mark.parametrize(("key_type", "key", "code"), [
    (KeyType.CPF, "52998224725", None),
    (KeyType.CPF, "529.982.247-25", "key_format"),
    (KeyType.CPF, "52998224724", "cpf_check_digits"),
    (KeyType.CNPJ, "11222333000181", None),
    (KeyType.CNPJ, "11222333000180", "cnpj_check_digits"),
    (KeyType.PHONE, "+5511987654321", None),
    (KeyType.PHONE, "5511987654321", "key_format"),
    (KeyType.EMAIL, "fulano@example.com.br", None),
    (KeyType.EMAIL, "Fulano@example.com", "email_not_lower_case"),
    (KeyType.EMAIL, "a" * 70 + "@b.com.br", "email_too_long"),
    (KeyType.EMAIL, "no-at-sign", "key_format"),
    (KeyType.EVP, "123e4567-e89b-42d3-a456-426614174000", None),
    (KeyType.EVP, "123E4567-E89B-42D3-A456-426614174000", "evp_format"),
    (KeyType.EVP, "123e4567-e89b-12d3-a456-426614174000", "evp_format"),
])
def test_key_problem(key_type: KeyType, key: str, code: str | None) -> None:
    problem = key_problem(key_type, key)
    assert (problem[0] if problem else None) == code


def test_valid_event_decodes_and_round_trips() -> None:
    doc = event_doc()
    event = decode_event(orjson.dumps(doc))
    assert event.key == "+5511987654321"
    assert event.entry is not None
    assert event.version == 17 and event.participant == "12345678"
    assert len(event.entry.cid) == 64 and event.entry.cid == event.entry.cid.lower()
    again = decode_event(encode_event(event))
    assert again == event


def test_delete_needs_only_key_key_type_and_participant() -> None:
    doc = {"eventId": "3f1c2b1e-7d4e-4d8a-9a57-0c2f3e8b6a11", "action": "key.deleted",
           "occurredAt": "2026-11-29T03:00:00Z",
           "entry": {"key": "+5511987654321", "keyType": "PHONE", "account": {"participant": "12345678"}}}
    event = decode_event(orjson.dumps(doc))
    assert event.is_delete and event.entry is None and event.version is None


BAD = [
    ("not_json", b"{not json"),
    ("not_utf8", b'{"a": "\xff\xfe"}'),
    ("oversize", b" " * 20000),
    ("not_an_object", b"[1, 2]"),
    ("missing_field", orjson.dumps(event_doc(entry__requestId=...))),
    ("missing_field", orjson.dumps(event_doc(eventId=...))),
    ("unknown_action", orjson.dumps(event_doc(action="key.moved"))),
    ("unknown_key_type", orjson.dumps(event_doc(entry__keyType="IBAN"))),
    ("cpf_check_digits", orjson.dumps(event_doc(entry__keyType="CPF", entry__key="52998224724"))),
    ("key_format", orjson.dumps(event_doc(entry__keyType="CPF", entry__key="+5511987654321"))),
    ("request_id_not_uuid", orjson.dumps(event_doc(entry__requestId="not-a-uuid"))),
    ("participant_not_8_digits", orjson.dumps(event_doc(entry__account__participant="1234567"))),
    ("wrong_type", orjson.dumps(event_doc(version="17"))),
    ("unknown_account_type", orjson.dumps(event_doc(entry__account__accountType="XXXX"))),
    ("branch_invalid", orjson.dumps(event_doc(entry__account__branch="00a1"))),
    ("account_number_invalid", orjson.dumps(event_doc(entry__account__accountNumber="12-3"))),
    ("owner_name_invalid", orjson.dumps(event_doc(entry__owner__name="x" * 121))),
    ("tax_id_owner_type_mismatch", orjson.dumps(event_doc(entry__owner__taxIdNumber="11222333000181"))),
    ("occurred_at_not_rfc3339_utc", orjson.dumps(event_doc(occurredAt="2026-11-29T03:00:00-03:00"))),
    ("occurred_at_not_rfc3339_utc", orjson.dumps(event_doc(occurredAt="2026-13-29T03:00:00Z"))),
    ("email_not_lower_case", orjson.dumps(event_doc(entry__keyType="EMAIL", entry__key="A@b.com"))),
    ("evp_format", orjson.dumps(event_doc(entry__keyType="EVP", entry__key="not-a-uuid"))),
    ("participant_not_8_digits", orjson.dumps(event_doc(entry__account__participant="12345678\n"))),
    ("event_id_not_uuid", orjson.dumps(event_doc(eventId="evt-1"))),
    ("invalid_version", orjson.dumps(event_doc(version=-1))),
    ("unknown_owner_type", orjson.dumps(event_doc(entry__owner__type="ROBOT"))),
    ("tax_id_invalid", orjson.dumps(event_doc(entry__owner__taxIdNumber="111.222.333-00"))),
    ("trade_name_invalid", orjson.dumps(event_doc(entry__owner__type="LEGAL_PERSON",
                                                  entry__owner__taxIdNumber="11222333000181",
                                                  entry__owner__tradeName="y" * 121))),
    ("trade_name_for_natural_person", orjson.dumps(event_doc(entry__owner__tradeName="Loja"))),
    ("cnpj_check_digits", orjson.dumps(event_doc(entry__keyType="CNPJ", entry__key="11222333000180"))),
    ("email_too_long", orjson.dumps(event_doc(entry__keyType="EMAIL", entry__key="a" * 70 + "@b.com.br"))),
    ("owner_name_invalid", orjson.dumps(event_doc(entry__owner__name=""))),
    ("key_format", orjson.dumps(event_doc(entry__key=""))),
    ("wrong_type", orjson.dumps(event_doc(entry__account__participant=12345678))),
    ("missing_field", orjson.dumps(event_doc(entry__account=...))),
    ("opening_date_invalid", orjson.dumps(event_doc(entry__account__openingDate="x" * 41))),
    ("invalid_reason", orjson.dumps(event_doc(reason="r" * 65))),
    ("wrong_type", orjson.dumps(event_doc(entry="not an object"))),
    ("request_id_not_uuid", orjson.dumps(event_doc(entry__requestId="01020304-0506-0708-090a-0b0c0d0e0f10\n"))),
]


@pytest.mark.parametrize(("code", "payload"), BAD, ids=[f"{c}-{i}" for i, (c, _) in enumerate(BAD)])
def test_each_rejection_has_its_code_and_a_reason(code: str, payload: bytes) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_event(payload)
    assert info.value.code == code
    assert info.value.reason and "João" not in info.value.reason and "11122233300" not in info.value.reason


def test_the_catalogue_has_at_least_25_distinct_reasons() -> None:
    # Each kind of bad input has its own code: the dead-letter reason and the metric label.
    assert len({code for code, _ in BAD}) >= 25


def test_key_events_records_are_checked_too() -> None:
    from vsync_stream.domain.events import change_of, decode_change, encode_change

    change = change_of(decode_event(orjson.dumps(event_doc())))
    assert decode_change(encode_change(change)) == change
    for bad in [b"[1, 2]", b"[1," + b"x" * 10, orjson.dumps([1, "e", "key.created", 0, None, "k", "PHONE", "1234",
                                                            None, None, None])]:
        with pytest.raises(InvalidEvent) as info:
            decode_change(bad)
        assert info.value.code == "malformed_record"
