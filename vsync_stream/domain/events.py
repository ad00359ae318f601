"""Decoding of Pix key events (the ``dict-events`` contract, DESIGN 4.1) with a reason per rejection.

The JSON Schema shipped in ``vsync_stream/schemas/dict-event.schema.json`` is the structural
contract; the rules a schema cannot express (CPF/CNPJ check digits, key format per key type, tax id
length per owner type, a real calendar date) are checked here. Every rejection raises
:class:`~vsync_stream.errors.InvalidEvent` with a stable code and a reason free of personal data.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any, NamedTuple

import fastjsonschema
import jsonschema
import orjson

from vsync_stream.domain.entry import Entry
from vsync_stream.domain.keys import KeyType, is_ispb, key_problem
from vsync_stream.errors import InvalidEvent

ACTIONS = ("key.created", "key.updated", "key.deleted")
DEFAULT_MAX_EVENT_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class KeyEvent:
    """A validated key event.

    ``entry`` is None for ``key.deleted`` (a delete needs only key, key type and participant).
    ``occurred_at_ms`` is milliseconds since the Unix epoch, UTC.
    """

    event_id: str
    action: str
    occurred_at_ms: int
    version: int | None
    key: str
    key_type: str
    participant: str
    entry: Entry | None
    reason: str | None = None
    expected: Expectation | None = None

    @property
    def is_delete(self) -> bool:
        """True for ``key.deleted``."""
        return self.action == "key.deleted"


class Expectation(NamedTuple):
    """What a conditional event (a reconciliation's correction) expects the table to hold for its key.

    The fold applies the event only while the key's row is still exactly this (issue #14): the
    CID it holds (None for a tombstone) and the ordering token of the last event applied to it
    (``version``, ``occurred_at_ms`` in epoch ms, ``event_id``). ``event_id`` None means "absent":
    the key had no row at all. A correction built from an older read therefore never beats an
    event folded since; the fold counts it as superseded instead (``vsync_corrections_superseded_total``).
    """

    cid: str | None
    version: int | None
    occurred_at_ms: int | None
    event_id: str | None

    @property
    def absent(self) -> bool:
        """True when the key had no row when the expectation was taken."""
        return self.event_id is None

    def to_list(self) -> list[Any]:
        """Compact form: ``[cid, version, occurredAtMs, eventId]`` (all null: absent)."""
        return [self.cid, self.version, self.occurred_at_ms, self.event_id]

    def to_json(self) -> dict[str, Any]:
        """Contract form (the ``expected`` object of the event schema); ``{}`` means absent."""
        if self.absent:
            return {}
        return {"cid": self.cid, "version": self.version, "occurredAtMs": self.occurred_at_ms,
                "eventId": self.event_id}


ABSENT = Expectation(None, None, None, None)


def _expectation_of(value: Any) -> Expectation | None:
    """Read an expectation in compact form (a 4-list) or contract form (an object); None when malformed."""
    if isinstance(value, dict):
        if not value:
            return ABSENT
        value = [value.get("cid"), value.get("version"), value.get("occurredAtMs"), value.get("eventId")]
    if not isinstance(value, list) or len(value) != 4:
        return None
    cid, version, occurred, event_id = value
    if event_id is None:
        return ABSENT if cid is None and version is None and occurred is None else None
    ok = (isinstance(event_id, str) and (cid is None or (isinstance(cid, str) and _CID_HEX(cid) is not None))
          and (version is None or type(version) is int) and type(occurred) is int)
    return Expectation(cid, version, occurred, event_id) if ok else None


@cache
def event_schema() -> dict[str, Any]:
    """The JSON Schema of the event contract, as a dict (loaded once from the package)."""
    text = resources.files("vsync_stream").joinpath("schemas/dict-event.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _anchored_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    # JSON Schema patterns are ECMA-262, where '$' never matches before a trailing newline; Python's
    # re does. Without this, "12345678\n" would pass as an ISPB in the explanation path.
    if not isinstance(instance, str):
        return
    if re.search(pattern, instance) is None or (pattern.endswith("$") and instance.endswith("\n")):
        yield jsonschema.ValidationError(f"does not match {pattern!r}")


@cache
def _validator() -> jsonschema.protocols.Validator:
    schema = event_schema()
    base = jsonschema.validators.validator_for(schema)
    base.check_schema(schema)
    cls = jsonschema.validators.extend(base, {"pattern": _anchored_pattern})
    return cls(schema)


@cache
def _fast_check() -> Any:
    # fastjsonschema compiles the schema to Python: ~20x faster than jsonschema on valid events.
    # jsonschema runs only on a rejection, to explain it precisely.
    return fastjsonschema.compile(event_schema())


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(document)"


def _schema_rejection(error: jsonschema.ValidationError) -> InvalidEvent:
    where = _path(error)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else "?"
        field = f"{where}.{missing}" if where != "(document)" else missing
        return InvalidEvent("missing_field", f"required field '{field}' is missing")
    if error.validator == "type":
        expected = error.validator_value
        return InvalidEvent(
            "wrong_type", f"field '{where}' must be of JSON type {expected}, got {type(error.instance).__name__}"
        )
    code = error.schema.get("x-reason") if isinstance(error.schema, dict) else None
    code = code or f"invalid_{error.validator}"
    if error.validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))
        return InvalidEvent(code, f"field '{where}' must be one of: {allowed}")
    if error.validator == "pattern":
        return InvalidEvent(code, f"field '{where}' has the wrong format")
    if error.validator in ("minLength", "maxLength", "minimum"):
        return InvalidEvent(code, f"field '{where}' breaks {error.validator}={error.validator_value}")
    return InvalidEvent(code, f"field '{where}' is invalid ({error.validator})")


def parse_occurred_at(text: str) -> int:
    """Parse an RFC 3339 UTC timestamp (``Z`` or ``+00:00``) into epoch milliseconds.

    Raises:
        InvalidEvent: not a real UTC date-time.
    """
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidEvent("occurred_at_not_rfc3339_utc", "occurredAt is not a real date-time") from None
    if moment.utcoffset() is None or moment.utcoffset().total_seconds() != 0:  # type: ignore[union-attr]
        raise InvalidEvent("occurred_at_not_rfc3339_utc", "occurredAt must be UTC")
    return int(moment.astimezone(UTC).timestamp() * 1000)


def validate_event_doc(doc: Any) -> KeyEvent:
    """Validate a decoded JSON document against the contract and build a :class:`KeyEvent`.

    Raises:
        InvalidEvent: the first rule the document breaks, with its code and reason.
    """
    if not isinstance(doc, dict):
        raise InvalidEvent("not_an_object", f"the event must be a JSON object, got {type(doc).__name__}")
    try:
        _fast_check()(doc)
    except fastjsonschema.JsonSchemaException:
        error = jsonschema.exceptions.best_match(_validator().iter_errors(doc))
        if error is not None:
            raise _schema_rejection(error) from None
        raise InvalidEvent("schema", "the event does not match the event schema") from None
    occurred_at_ms = parse_occurred_at(doc["occurredAt"])
    raw_entry = doc["entry"]
    key_type = KeyType(raw_entry["keyType"])
    problem = key_problem(key_type, raw_entry["key"])
    if problem is not None:
        raise InvalidEvent(*problem)
    action = doc["action"]
    entry: Entry | None = None
    if action != "key.deleted":
        owner = raw_entry["owner"]
        tax_id_length = 11 if owner["type"] == "NATURAL_PERSON" else 14
        if len(owner["taxIdNumber"]) != tax_id_length:
            raise InvalidEvent(
                "tax_id_owner_type_mismatch",
                f"owner of type {owner['type']} must have a {tax_id_length}-digit taxIdNumber",
            )
        if owner["type"] == "NATURAL_PERSON" and owner.get("tradeName"):
            raise InvalidEvent("trade_name_for_natural_person", "only a LEGAL_PERSON owner may have a tradeName")
        entry = Entry.from_json(raw_entry)
    return KeyEvent(
        event_id=doc["eventId"].lower(),
        action=action,
        occurred_at_ms=occurred_at_ms,
        version=doc.get("version"),
        key=raw_entry["key"],
        key_type=key_type.value,
        participant=raw_entry["account"]["participant"],
        entry=entry,
        reason=doc.get("reason"),
        expected=_expected_field(doc),
    )


def _expected_field(doc: dict[str, Any]) -> Expectation | None:
    raw = doc.get("expected")
    if raw is None:
        return None
    expectation = _expectation_of(raw)
    if expectation is None:
        raise InvalidEvent("invalid_expected", "field 'expected' must be {} (absent) or "
                                               "{cid, version, occurredAtMs, eventId}")
    return expectation


def decode_event(payload: bytes, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> KeyEvent:
    """Decode and validate one event message.

    Args:
        payload: the message bytes (UTF-8 JSON).
        max_bytes: the largest payload accepted, in bytes.

    Returns:
        The validated event.

    Raises:
        InvalidEvent: oversize, not UTF-8, not JSON, or breaking the contract; ``code`` says which.
    """
    if len(payload) > max_bytes:
        raise InvalidEvent("oversize", f"payload of {len(payload)} bytes exceeds the limit of {max_bytes}")
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent("not_utf8", f"payload is not UTF-8 (byte {exc.start})") from None
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("not_json", f"payload is not JSON: {exc.msg}") from None
    return validate_event_doc(doc)


def event_to_json(event: KeyEvent) -> dict[str, Any]:
    """The event back in contract shape (DESIGN 4.1), e.g. for a corrective or generated event."""
    entry: dict[str, Any]
    if event.entry is not None:
        entry = event.entry.to_json()
    else:
        entry = {"key": event.key, "keyType": event.key_type, "account": {"participant": event.participant}}
    occurred = datetime.fromtimestamp(event.occurred_at_ms / 1000, tz=UTC)
    doc = {
        "eventId": event.event_id,
        "action": event.action,
        "occurredAt": occurred.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "version": event.version,
        "reason": event.reason,
        "entry": entry,
    }
    if event.expected is not None:
        doc["expected"] = event.expected.to_json()
    return doc


def encode_event(event: KeyEvent) -> bytes:
    """Serialise an event to contract JSON bytes."""
    return orjson.dumps(event_to_json(event))


class KeyChange(NamedTuple):
    """What the fold needs of a key event: its ordering token and the CID it brings.

    This is the record of the Kafka key-events topic: the adapter validates the contract event and
    computes the CID once, so the fold never re-parses personal data. ``cid`` and ``request_id`` are
    None for a delete.
    """

    event_id: str
    action: str
    occurred_at_ms: int
    version: int | None
    key: str
    key_type: str
    participant: str
    cid: str | None
    request_id: str | None
    reason: str | None = None
    expected: Expectation | None = None  # set on a reconciliation's correction only

    @property
    def is_delete(self) -> bool:
        """True for ``key.deleted``."""
        return self.cid is None


def change_of(event: KeyEvent) -> KeyChange:
    """The fold's view of a validated event (computes the CID: BCB DICT API, "Cálculo de CID")."""
    entry = event.entry
    return KeyChange(event.event_id, event.action, event.occurred_at_ms, event.version, event.key, event.key_type,
                     event.participant, entry.cid if entry is not None else None,
                     entry.request_id if entry is not None else None, event.reason, event.expected)


RECORD_FORMAT = 1
_RECORD_FIELDS = 11
_CONDITIONAL_FIELDS = 12  # a correction appends its expectation
_KEY_TYPE_NAMES = frozenset(kt.value for kt in KeyType)
_CID_HEX = re.compile(r"[0-9a-f]{64}").fullmatch  # the stored form of a CID: 64 lower-case hex


def encode_change(change: KeyChange) -> bytes:
    """Serialise a change as a key-events record: a JSON array, format 1.

    ``[1, eventId, action, occurredAtMs, version, key, keyType, participant, cid, requestId, reason]``,
    and for a conditional event (a correction) a twelfth field, its expectation
    ``[expectedCid, expectedVersion, expectedOccurredAtMs, expectedEventId]`` (all null: the key
    had no row); see :class:`Expectation`.
    """
    fields = [RECORD_FORMAT, change.event_id, change.action, change.occurred_at_ms, change.version,
              change.key, change.key_type, change.participant, change.cid, change.request_id, change.reason]
    if change.expected is not None:
        fields.append(change.expected.to_list())
    return orjson.dumps(fields)


def decode_change(payload: bytes | None, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> KeyChange:
    """Decode a key-events record: the compact format, or a contract event (DESIGN 4.1) as fallback.

    Anything may be written to a Kafka topic, so the compact form is checked too (cheaply); nothing
    but :class:`InvalidEvent` escapes, whatever the record holds.

    Args:
        payload: the record's value; None for a null value (a tombstone).

    Raises:
        InvalidEvent: the record is neither a well-formed compact record nor a valid event.
    """
    if payload is None:
        raise InvalidEvent("malformed_record", "key-events record has no value (a tombstone)")
    if not payload.startswith(b"[1,"):
        return change_of(decode_event(payload, max_bytes))
    try:
        fields = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidEvent("malformed_record", "key-events record is not JSON") from None
    expected: Expectation | None = None
    if type(fields) is list and len(fields) == _CONDITIONAL_FIELDS:
        expected = _expectation_of(fields.pop())
        if expected is None:
            raise InvalidEvent("malformed_record", "key-events record has a malformed expectation")
    if len(fields) != _RECORD_FIELDS:
        raise InvalidEvent("malformed_record", f"key-events record has {len(fields)} fields, not {_RECORD_FIELDS}")
    _fmt, event_id, action, occurred, version, key, key_type, participant, cid, request_id, reason = fields
    ok = (isinstance(event_id, str) and type(action) is str and action in ACTIONS and type(occurred) is int
          and (version is None or type(version) is int) and isinstance(key, str) and key
          and type(key_type) is str and key_type in _KEY_TYPE_NAMES  # a list or object is not hashable
          and is_ispb(participant) and (reason is None or isinstance(reason, str)))
    if ok and action == "key.deleted":
        ok = cid is None and request_id is None
    elif ok:
        ok = isinstance(cid, str) and _CID_HEX(cid) is not None and isinstance(request_id, str)
    if not ok:
        raise InvalidEvent("malformed_record", "key-events record has a field of the wrong type or value")
    return KeyChange(event_id, action, occurred, version, key, key_type, participant, cid, request_id, reason,
                     expected)
