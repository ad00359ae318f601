"""The participant's export of its own entries (the bootstrap input): one column set, row rules, CIDs.

An export is JSON Lines (one object per line) or CSV (a header line, then one entry per line),
optionally gzip-compressed; the format is told from the bytes (gzip magic ``1f 8b``; a first
non-blank byte ``{`` is JSON Lines), never from the file name. Both carry exactly the columns of
:data:`EXPORT_COLUMNS`: the nine CID attributes (BCB DICT API, "Cálculo de CID"), the RequestId, and
the ordering token of the last event applied to the key (``version`` and/or ``occurredAt``, plus
``eventId`` when known). Each row becomes the :class:`~vsync_stream.domain.fold.EntryState` the fold
would have left after that event, so the live events that follow are ordered against it by the same
rules (DESIGN 3.3): an older one is stale, a newer one applies, the same ``eventId`` is a duplicate.

A bad row is a :class:`~vsync_stream.errors.InvalidEvent` (code + reason, no personal data) for the
caller to report with its line; a file that is not an export at all (CSV header or first JSON row
with another column set, nothing but blank lines) raises :class:`ExportFormatError`.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Iterable, Iterator
from typing import IO, Any, NamedTuple

import orjson

from vsync_stream.domain.cid import cid_of, entry_attributes
from vsync_stream.domain.entry import AccountType, Entry, OwnerType
from vsync_stream.domain.events import parse_occurred_at
from vsync_stream.domain.fold import EntryState
from vsync_stream.domain.keys import KeyType, key_problem
from vsync_stream.errors import InvalidEvent, VsyncError

# The one column set of an export, in the documented order (CSV headers may list them in any order).
EXPORT_COLUMNS: tuple[str, ...] = (
    "keyType", "key", "ownerTaxIdNumber", "ownerName", "ownerTradeName", "participant", "branch",
    "accountNumber", "accountType", "requestId", "version", "occurredAt", "eventId",
)
# May be empty (CSV) or null/absent (JSON): hashed as the empty string, or not part of the token.
OPTIONAL_COLUMNS = frozenset({"ownerTradeName", "branch", "version", "occurredAt", "eventId"})
REQUIRED_COLUMNS = frozenset(EXPORT_COLUMNS) - OPTIONAL_COLUMNS
_COLUMN_SET = frozenset(EXPORT_COLUMNS)

GZIP_MAGIC = b"\x1f\x8b"

# The event contract's rules for the same fields (vsync_stream/schemas/dict-event.schema.json),
# with ASCII digits only.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}").fullmatch
_PARTICIPANT = re.compile(r"[0-9]{8}").fullmatch
_BRANCH = re.compile(r"[0-9]{1,4}").fullmatch
_ACCOUNT_NUMBER = re.compile(r"[0-9]{1,20}").fullmatch
_TAX_ID = re.compile(r"[0-9]{11}|[0-9]{14}").fullmatch
_VERSION = re.compile(r"[0-9]{1,18}").fullmatch
_KEY_TYPES = {kt.value: kt for kt in KeyType}
_ACCOUNT_TYPES = frozenset(a.value for a in AccountType)
_NAME_MAX = 120
_KEY_MAX = 128


class ExportFormatError(VsyncError):
    """The input is not an export: wrong column set, unreadable header, or no rows at all."""


class ExportRow(NamedTuple):
    """One valid export row: the Pix key and the table state it stands for."""

    key: str
    state: EntryState


# Named tuples built per row without their generated Python ``__new__`` (a frame per call: ~14 % of
# a bootstrap's scan in py-spy); the same tuples.
_new = tuple.__new__


class ParsedLine(NamedTuple):
    """One data line of an export: its 1-based line number and the row, or why it was rejected."""

    line: int
    row: ExportRow | None
    error: InvalidEvent | None


def _optional(values: dict[str, Any], name: str) -> str | None:
    value = values.get(name)
    if value is None or value == "":
        return None
    if type(value) is not str:
        raise InvalidEvent("wrong_type", f"column '{name}' must be a string")
    return value


def _required_problem(values: dict[str, Any]) -> InvalidEvent:
    for name in EXPORT_COLUMNS:
        if name in REQUIRED_COLUMNS:
            value = values.get(name)
            if value is None or value == "":
                return InvalidEvent("missing_value", f"column '{name}' is empty")
            if type(value) is not str:
                return InvalidEvent("wrong_type", f"column '{name}' must be a string")
    return InvalidEvent("missing_value", "a required column is empty")  # not reached


def row_from_values(values: dict[str, Any], participants: frozenset[str]) -> ExportRow:
    """Validate one row (column name → value) and build its :class:`ExportRow`.

    Args:
        values: the row's columns; strings, except ``version`` which may also be a JSON integer.
            None or ``""`` is an absent value (allowed only in :data:`OPTIONAL_COLUMNS`).
        participants: the ISPBs this deployment serves (``VSYNC_PARTICIPANTS``).

    Returns:
        The row; ``state.cid`` is the entry's CID (64 lower-case hex), ``state.request_id`` lower-case,
        ``state.event_id`` the ``eventId`` lower-cased or ``""`` when absent (so a live event with the
        same version and time orders after the snapshot and applies).

    Raises:
        InvalidEvent: the first rule the row breaks (stable code, reason without personal data).
    """
    # The per-row hot path of a bootstrap (tens of millions of rows): plain lookups, no helper per column.
    get = values.get
    key_type_text, key, tax_id, owner_name = get("keyType"), get("key"), get("ownerTaxIdNumber"), get("ownerName")
    participant, account_number, account_type = get("participant"), get("accountNumber"), get("accountType")
    request_id = get("requestId")
    if not (type(key_type_text) is str and type(key) is str and type(tax_id) is str and type(owner_name) is str
            and type(participant) is str and type(account_number) is str and type(account_type) is str
            and type(request_id) is str) or "" in (key_type_text, key, tax_id, owner_name, participant,
                                                  account_number, account_type, request_id):
        raise _required_problem(values)
    key_type = _KEY_TYPES.get(key_type_text)
    if key_type is None:
        raise InvalidEvent("unknown_key_type", "keyType must be one of CPF, CNPJ, PHONE, EMAIL, EVP")
    if len(key) > _KEY_MAX:
        raise InvalidEvent("key_format", f"key is longer than {_KEY_MAX} characters")
    problem = key_problem(key_type, key)
    if problem is not None:
        raise InvalidEvent(*problem)
    if not _PARTICIPANT(participant):
        raise InvalidEvent("participant_not_8_digits", "participant must be an ISPB of 8 digits")
    if participant not in participants:
        raise InvalidEvent("unknown_participant", f"participant {participant} is not in VSYNC_PARTICIPANTS")
    if not _TAX_ID(tax_id):
        raise InvalidEvent("tax_id_invalid", "ownerTaxIdNumber must be 11 (CPF) or 14 (CNPJ) digits")
    if len(owner_name) > _NAME_MAX:
        raise InvalidEvent("owner_name_invalid", f"ownerName is longer than {_NAME_MAX} characters")
    trade_name = _optional(values, "ownerTradeName")
    if trade_name is not None:
        if len(trade_name) > _NAME_MAX:
            raise InvalidEvent("trade_name_invalid", f"ownerTradeName is longer than {_NAME_MAX} characters")
        if len(tax_id) == 11:
            raise InvalidEvent("trade_name_for_natural_person", "only a legal person (14-digit tax id) may have "
                                                                "an ownerTradeName")
    branch = _optional(values, "branch")
    if branch is not None and not _BRANCH(branch):
        raise InvalidEvent("branch_invalid", "branch must be 1 to 4 digits")
    if not _ACCOUNT_NUMBER(account_number):
        raise InvalidEvent("account_number_invalid", "accountNumber must be 1 to 20 digits")
    if account_type not in _ACCOUNT_TYPES:
        raise InvalidEvent("unknown_account_type", "accountType must be one of CACC, TRAN, SLRY, SVGS")
    if not _UUID(request_id):
        raise InvalidEvent("request_id_not_uuid", "requestId must be a UUID")
    request_id = request_id.lower()
    version = _version(get("version"))
    occurred = _optional(values, "occurredAt")
    occurred_at_ms = 0 if occurred is None else parse_occurred_at(occurred)
    if version is None and occurred is None:
        raise InvalidEvent("no_ordering_token", "a row needs the ordering token of its last event: version, "
                                                "occurredAt, or both")
    event_id = _optional(values, "eventId")
    if event_id is not None and not _UUID(event_id):
        raise InvalidEvent("event_id_not_uuid", "eventId must be a UUID")
    entry = Entry(key, key_type.value, request_id, participant, branch, account_number, account_type,
                  OwnerType.NATURAL_PERSON if len(tax_id) == 11 else OwnerType.LEGAL_PERSON, tax_id, owner_name,
                  trade_name)
    # BCB DICT API, "Cálculo de CID"; the RequestId's RFC 4122 bytes are its hex digits (format checked above).
    cid = cid_of(bytes.fromhex(request_id.replace("-", "")), entry_attributes(entry))
    state = _new(EntryState, (participant, key_type.value, cid, request_id, version, occurred_at_ms,
                              "" if event_id is None else event_id.lower()))
    return _new(ExportRow, (key, state))


def _version(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if type(value) is int:
        if value < 0:
            raise InvalidEvent("invalid_version", "version must be a non-negative integer")
        return value
    if isinstance(value, str) and _VERSION(value):
        return int(value)
    raise InvalidEvent("invalid_version", "version must be a non-negative integer")


def column_problem(names: set[str] | frozenset[str], *, all_required: bool) -> str | None:
    """Say what is wrong with a set of column names, or None when it is the export's column set.

    Args:
        names: the columns found (a CSV header, or the keys of one JSON row).
        all_required: True for a CSV header (all 13 columns must be named); False for a JSON row
            (optional columns may be left out).
    """
    unknown = sorted(names - _COLUMN_SET)
    missing = sorted((_COLUMN_SET if all_required else REQUIRED_COLUMNS) - names)
    if not unknown and not missing:
        return None
    parts = []
    if unknown:
        parts.append(f"unknown columns {unknown}")
    if missing:
        parts.append(f"missing columns {missing}")
    return "; ".join(parts) + f" (the export's columns are {', '.join(EXPORT_COLUMNS)})"


def open_export(stream: IO[bytes]) -> io.BufferedReader[Any]:
    """Wrap a binary stream so that a gzip-compressed export reads as plain bytes.

    Args:
        stream: the export as it comes (a file opened ``rb``, or ``sys.stdin.buffer``).

    Returns:
        A buffered binary stream of the uncompressed export.
    """
    buffered = stream if isinstance(stream, io.BufferedReader) else io.BufferedReader(stream)  # type: ignore[arg-type,type-var]
    if buffered.peek(2)[:2] == GZIP_MAGIC:
        return io.BufferedReader(gzip.GzipFile(fileobj=buffered, mode="rb"), buffer_size=1 << 20)  # type: ignore[arg-type,type-var]
    return buffered


def iter_export(stream: IO[bytes], participants: frozenset[str]) -> Iterator[ParsedLine]:
    """Parse an export, one :class:`ParsedLine` per data line (blank lines are skipped).

    Args:
        stream: the export, gzip or not (see :func:`open_export`).
        participants: the ISPBs this deployment serves.

    Raises:
        ExportFormatError: the input is empty, its CSV header or its first JSON row has another
            column set, or it is neither JSON Lines nor CSV; nothing of it should be loaded.
    """
    data = open_export(stream)
    head = data.peek(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head:
        raise ExportFormatError("the export is empty (no header, no rows)")
    if head[:1] == b"{":
        return _iter_jsonl(data, participants)
    return _iter_csv(data, participants)


def _iter_jsonl(data: IO[bytes], participants: frozenset[str]) -> Iterator[ParsedLine]:
    return iter_jsonl_lines(data, participants)


def iter_jsonl_lines(lines: Iterable[bytes], participants: frozenset[str], first_line: int = 1,
                     at_start: bool = True) -> Iterator[ParsedLine]:
    """Parse JSON Lines (a whole export, or a slice of one starting at line ``first_line``).

    Args:
        lines: the raw lines (bytes, with or without their line end).
        participants: the ISPBs this deployment serves.
        first_line: the 1-based number of the first line given.
        at_start: the slice starts the file, so its first row with another column set means the
            file is not an export (:class:`ExportFormatError`) rather than one bad row.
    """
    first = at_start
    for number, raw in enumerate(lines, first_line):
        if not raw.strip():
            continue
        try:
            try:
                values = orjson.loads(raw)  # orjson checks the UTF-8 too
            except orjson.JSONDecodeError as exc:
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as bad:
                    raise InvalidEvent("not_utf8", f"the line is not UTF-8 (byte {bad.start + 1})") from None
                raise InvalidEvent("not_json", f"the line is not JSON: {exc.msg}") from None
            if type(values) is not dict:
                raise InvalidEvent("not_an_object", "the line must be one JSON object")
            names = values.keys()
            if not (names <= _COLUMN_SET and names >= REQUIRED_COLUMNS):
                problem = column_problem(set(names), all_required=False)
                assert problem is not None
                if first:
                    raise ExportFormatError(f"line {number}: {problem}")
                raise InvalidEvent("wrong_columns", problem)
            first = False
            yield _new(ParsedLine, (number, row_from_values(values, participants), None))
        except InvalidEvent as exc:
            first = False
            yield ParsedLine(number, None, exc)


def _iter_csv(data: IO[bytes], participants: frozenset[str]) -> Iterator[ParsedLine]:
    # Surrogate escapes keep a non-UTF-8 line readable, so it is rejected with its own line number.
    text = io.TextIOWrapper(data, encoding="utf-8", errors="surrogateescape", newline="")  # type: ignore[type-var]
    reader = csv.reader(text, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise ExportFormatError("the export is empty (no header, no rows)") from None
    except csv.Error as exc:
        raise ExportFormatError(f"line 1: not a CSV header ({exc})") from None
    if header and header[0].startswith("\ufeff"):
        header[0] = header[0][1:]
    if len(set(header)) != len(header):
        raise ExportFormatError(f"line 1: the CSV header names a column twice ({', '.join(header)})")
    problem = column_problem(set(header), all_required=True)
    if problem is not None:
        hint = " (a JSON Lines export starts with '{')" if len(header) == 1 else ""
        raise ExportFormatError(f"line 1: the CSV header has {problem}{hint}")
    width = len(header)
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield ParsedLine(start, None, InvalidEvent("csv_syntax", f"not a CSV row ({exc})"))
            continue
        if not fields or fields == [""]:
            continue
        try:
            if len(fields) != width:
                raise InvalidEvent("wrong_column_count", f"the row has {len(fields)} fields, the header {width}")
            for value in fields:
                if not value.isascii():
                    try:
                        value.encode("utf-8")
                    except UnicodeEncodeError as exc:
                        raise InvalidEvent("not_utf8", f"the line is not UTF-8 (column "
                                                       f"'{header[fields.index(value)]}')") from exc
            yield ParsedLine(start, row_from_values(dict(zip(header, fields, strict=True)), participants), None)
        except InvalidEvent as exc:
            yield ParsedLine(start, None, exc)


def export_record(entry: Entry, *, version: int | None = None, occurred_at: str | None = None,
                  event_id: str | None = None) -> dict[str, Any]:
    """One export row of an entry (column → value), as a participant's export would carry it.

    Args:
        entry: the entry as the participant's base holds it.
        version: the version of the key's last event, if the base keeps it.
        occurred_at: ``occurredAt`` of the key's last event (RFC 3339 UTC), if kept.
        event_id: ``eventId`` of the key's last event, if kept.
    """
    return {"keyType": entry.key_type, "key": entry.key, "ownerTaxIdNumber": entry.owner_tax_id,
            "ownerName": entry.owner_name, "ownerTradeName": entry.owner_trade_name,
            "participant": entry.participant, "branch": entry.branch, "accountNumber": entry.account_number,
            "accountType": entry.account_type, "requestId": entry.request_id, "version": version,
            "occurredAt": occurred_at, "eventId": event_id}


def write_jsonl(records: Iterator[dict[str, Any]] | list[dict[str, Any]], out: IO[bytes]) -> int:
    """Write export rows as JSON Lines; returns the rows written."""
    n = 0
    for record in records:
        out.write(orjson.dumps(record) + b"\n")
        n += 1
    return n


def write_csv(records: Iterator[dict[str, Any]] | list[dict[str, Any]], out: IO[str]) -> int:
    """Write export rows as CSV with the header of :data:`EXPORT_COLUMNS`; returns the rows written."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    n = 0
    for record in records:
        writer.writerow(["" if record.get(c) is None else record[c] for c in EXPORT_COLUMNS])
        n += 1
    return n
