"""Property tests of the decoder: whatever arrives, it is a valid event or a dead letter."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import event_doc
from vsync_stream.domain.events import KeyChange, KeyEvent, decode_change, decode_event, validate_event_doc
from vsync_stream.errors import InvalidEvent

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=30,
)


def outcome(payload: bytes) -> KeyEvent | InvalidEvent:
    try:
        return decode_event(payload)
    except InvalidEvent as exc:
        assert exc.code and exc.reason
        return exc


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_never_raise_anything_else(payload: bytes) -> None:
    assert isinstance(outcome(payload), KeyEvent | InvalidEvent)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_random_json_never_raises_anything_else(doc: object) -> None:
    assert isinstance(outcome(json.dumps(doc).encode()), KeyEvent | InvalidEvent)


FIELDS = ["eventId", "action", "occurredAt", "version", "reason", "entry__key", "entry__keyType",
          "entry__requestId", "entry__account__participant", "entry__account__branch",
          "entry__account__accountNumber", "entry__account__accountType", "entry__owner__type",
          "entry__owner__taxIdNumber", "entry__owner__name", "entry__owner__tradeName"]


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIELDS), json_values | st.just(...))
def test_mutating_one_field_of_a_valid_event_never_raises_anything_else(field: str, value: object) -> None:
    doc = event_doc(**{field: value})
    try:
        result: KeyEvent | InvalidEvent = validate_event_doc(doc)
    except InvalidEvent as exc:
        result = exc
    assert isinstance(result, KeyEvent | InvalidEvent)
    if isinstance(result, KeyEvent) and result.entry is not None:
        assert len(result.entry.cid) == 64


compact_fields = st.lists(json_values, min_size=10, max_size=10).map(lambda rest: [1, *rest])


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(compact_fields | st.lists(json_values, max_size=12).map(lambda rest: [1, *rest]))
def test_any_compact_record_is_a_change_or_a_dead_letter(fields: list[object]) -> None:
    # Key-events records are written by anyone who can write to Kafka: a list or an object where
    # the key type belongs once crashed the fold (unhashable) instead of being dead-lettered.
    try:
        change = decode_change(json.dumps(fields).encode())
    except InvalidEvent as exc:
        assert exc.code and exc.reason
    else:
        assert isinstance(change, KeyChange)


def test_a_tombstone_and_an_unhashable_key_type_are_dead_letters() -> None:
    unhashable = (b'[1,"0f1e2d3c-4b5a-4978-8877-665544332211","key.created",1795000000000,1,"a@b.c",["EMAIL"],'
                  b'"12345678","' + b"ab" * 32 + b'","0f1e2d3c-4b5a-4978-8877-665544332211",null]')
    for payload in (None, unhashable, unhashable.replace(b'["EMAIL"]', b'{"t":"EMAIL"}'),
                    unhashable.replace(b'"key.created"', b'["key.created"]')):
        try:
            decode_change(payload)
        except InvalidEvent as exc:
            assert exc.code == "malformed_record"
        else:
            raise AssertionError(f"accepted {payload!r}")
