"""The bootstrap export: column set, row rules, CIDs equal to the event path's, rejects with line numbers."""

from __future__ import annotations

import gzip
import io
import os
import random
from datetime import UTC, datetime

import pytest
from aiokafka.partitioner import murmur2

from vsync_stream import bootstrap_spool
from vsync_stream.bootstrap_spool import Rejects, read_bucket, scan, split_duplicates
from vsync_stream.bridges.kafka_partitioner import murmur2_many, partitions_of
from vsync_stream.domain.events import change_of
from vsync_stream.domain.export import (
    EXPORT_COLUMNS,
    ExportFormatError,
    export_record,
    iter_export,
    row_from_values,
    write_csv,
    write_jsonl,
)
from vsync_stream.domain.fold import EntryState, FoldStatus, fold
from vsync_stream.domain.vsync import VSyncLedger
from vsync_stream.errors import InvalidEvent
from vsync_stream.simulator.model import DictModel
from vsync_stream.simulator.population import generate_entries

P = frozenset({"12345678", "00000208"})


def _entries(n: int = 200) -> list:
    return list(generate_entries(n, sorted(P), seed=3))


def _jsonl(records: list[dict]) -> io.BytesIO:
    buf = io.BytesIO()
    write_jsonl(records, buf)
    return io.BytesIO(buf.getvalue())


def _csv(records: list[dict]) -> io.BytesIO:
    text = io.StringIO()
    write_csv(records, text)
    return io.BytesIO(text.getvalue().encode("utf-8"))


def test_row_state_is_what_the_fold_leaves_after_the_create_event() -> None:
    model = DictModel()
    for entry in _entries(100):
        event = model.create(entry)
        row = row_from_values(export_record(entry, version=event.version), P)
        folded = fold(None, change_of(event)).state
        assert row.key == entry.key
        assert row.state.cid == entry.cid == folded.cid
        assert (row.state.participant, row.state.key_type, row.state.request_id, row.state.version) == (
            folded.participant, folded.key_type, folded.request_id, folded.version)
        assert EntryState.decode(row.state.encode()) == row.state


def test_live_events_are_ordered_against_the_snapshot_token() -> None:
    model = DictModel()
    entry = _entries(1)[0]
    first = model.create(entry)
    second = model.update(entry.key, account_number="123456")
    snapshot = row_from_values(export_record(entry, version=first.version), P).state
    assert fold(snapshot, change_of(first)).status is FoldStatus.APPLIED  # same token, no event id: applies
    assert fold(snapshot, change_of(first)).added is None  # ... and changes no CID
    newer = fold(snapshot, change_of(second))
    assert newer.status is FoldStatus.APPLIED and newer.state.cid != snapshot.cid
    second_at = datetime.fromtimestamp(second.occurred_at_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    at_second = row_from_values(export_record(model.entry(entry.key), version=second.version,
                                              occurred_at=second_at.replace("+00:00", "Z"),
                                              event_id=second.event_id), P).state
    assert fold(at_second, change_of(first)).status is FoldStatus.STALE
    # the whole token and the event id kept by the base: the live copy of that event is a replay
    assert fold(at_second, change_of(second)).status is FoldStatus.DUPLICATE


@pytest.mark.parametrize("writer", [_jsonl, _csv])
@pytest.mark.parametrize("compress", [False, True])
def test_both_formats_gzip_or_not_give_the_same_rows(writer, compress) -> None:
    entries = _entries()
    records = [export_record(e, version=i + 1, occurred_at="2026-01-02T03:04:05.678Z") for i, e in enumerate(entries)]
    data = writer(records)
    if compress:
        data = io.BytesIO(gzip.compress(data.getvalue()))
    parsed = list(iter_export(data, P))
    assert all(p.error is None for p in parsed), [p.error for p in parsed if p.error]
    assert [p.row.key for p in parsed] == [e.key for e in entries]
    assert [p.row.state.cid for p in parsed] == [e.cid for e in entries]
    assert parsed[0].row.state.occurred_at_ms == 1767323045678
    assert [p.line for p in parsed] == list(range(2, len(entries) + 2)) if writer is _csv else list(
        range(1, len(entries) + 1))


def _one(values: dict) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        row_from_values(values, P)
    return info.value


@pytest.mark.parametrize(("change", "code"), [
    ({"participant": "99999999"}, "unknown_participant"),
    ({"participant": "1234567"}, "participant_not_8_digits"),
    ({"keyType": "CPF", "key": "12345678900"}, "cpf_check_digits"),
    ({"keyType": "EVP"}, "evp_format"),
    ({"keyType": "PIX"}, "unknown_key_type"),
    ({"requestId": "not-a-uuid"}, "request_id_not_uuid"),
    ({"version": None, "occurredAt": None}, "no_ordering_token"),
    ({"version": "v1"}, "invalid_version"),
    ({"version": -1}, "invalid_version"),
    ({"occurredAt": "2026-01-02 03:04:05"}, "occurred_at_not_rfc3339_utc"),
    ({"accountType": "XXXX"}, "unknown_account_type"),
    ({"accountNumber": "12a"}, "account_number_invalid"),
    ({"branch": "12345"}, "branch_invalid"),
    ({"ownerTaxIdNumber": "123"}, "tax_id_invalid"),
    ({"ownerName": ""}, "missing_value"),
    ({"eventId": "x"}, "event_id_not_uuid"),
    ({"accountNumber": "١٢٣"}, "account_number_invalid"),  # Arabic-Indic digits are not ASCII digits
])
def test_bad_rows_are_rejected_with_a_code(change: dict, code: str) -> None:
    entry = next(e for e in _entries() if e.key_type == "EMAIL")
    values = {**export_record(entry, version=3), **change}
    error = _one(values)
    assert error.code == code
    assert entry.key not in error.reason and entry.owner_tax_id not in error.reason  # no personal data


def test_a_key_of_the_wrong_type_is_rejected() -> None:
    entry = next(e for e in _entries() if e.key_type == "EMAIL")
    assert _one({**export_record(entry, version=1), "keyType": "PHONE"}).code == "key_format"


def test_rejects_name_their_line_and_the_good_rows_still_parse() -> None:
    entries = _entries(5)
    lines = [b"" for _ in range(5)]
    buf = io.BytesIO()
    write_jsonl([export_record(e, version=1) for e in entries], buf)
    lines = buf.getvalue().split(b"\n")
    lines.insert(2, b'{"keyType": "CPF", "key": "\xff\xfe"}')  # line 3: not UTF-8
    lines.insert(4, b"[1, 2]")  # line 5: not an object
    lines.insert(5, b'{"nope": 1, "keyType": "CPF"}')  # line 6: wrong columns
    parsed = list(iter_export(io.BytesIO(b"\n".join(lines)), P))
    bad = {p.line: p.error.code for p in parsed if p.error is not None}
    assert bad == {3: "not_utf8", 5: "not_an_object", 6: "wrong_columns"}
    assert sum(p.row is not None for p in parsed) == 5


def test_csv_non_utf8_row_is_rejected_with_its_line() -> None:
    data = _csv([export_record(e, version=1) for e in _entries(3)]).getvalue().split(b"\n")
    data[2] = data[2].replace(b",", b",\xe9", 1)
    parsed = list(iter_export(io.BytesIO(b"\n".join(data)), P))
    assert [(p.line, p.error.code) for p in parsed if p.error] == [(3, "not_utf8")]


@pytest.mark.parametrize("content", [
    b"",
    b"\n\n",
    (b"keyType,key\n"),
    (",".join(EXPORT_COLUMNS[:-1]) + ",extra\n").encode(),
    b'{"keyType": "CPF", "colour": "blue"}\n',
])
def test_not_an_export_is_a_clear_error(content: bytes) -> None:
    with pytest.raises(ExportFormatError) as info:
        list(iter_export(io.BytesIO(content), P))
    assert "line 1" in str(info.value) or "empty" in str(info.value)


def test_csv_columns_in_any_order() -> None:
    entry = _entries(1)[0]
    record = export_record(entry, version=7)
    columns = list(reversed(EXPORT_COLUMNS))
    text = ",".join(columns) + "\n" + ",".join("" if record[c] is None else str(record[c]) for c in columns) + "\n"
    [parsed] = list(iter_export(io.BytesIO(text.encode()), P))
    assert parsed.row.state.cid == entry.cid and parsed.row.state.version == 7


def test_duplicates_are_rejected_on_every_row() -> None:
    records = [(1, 0, b"a", b"1"), (2, 0, b"b", b"2"), (3, 0, b"a", b"3"), (4, 1, b"c", b"4"), (9, 0, b"a", b"5")]
    unique, duplicated = split_duplicates(records)
    assert unique == {b"b": b"2", b"c": b"4"}
    assert duplicated == {b"a": [(0, 1), (0, 3), (0, 9)]}


def test_vectorised_murmur2_is_kafkas() -> None:
    rng = random.Random(5)
    keys = [os.urandom(rng.randrange(0, 80)) for _ in range(3000)] + [b"", b"a", b"ab", b"abc", b"abcd"]
    keys += [e.key.encode() for e in _entries(500)]
    assert [int(h) for h in murmur2_many(keys)] == [murmur2(k) for k in keys]
    assert partitions_of(keys, 8).tolist() == [(murmur2(k) & 0x7FFFFFFF) % 8 for k in keys]


def _scan_with(jobs: int, export, work, monkeypatch) -> tuple[bytes, list, VSyncLedger, int]:
    monkeypatch.setattr(bootstrap_spool, "PARALLEL_MIN_BYTES", 0)
    rejects = Rejects(work / "rejects.jsonl", 0)
    ledger = VSyncLedger()
    rows = scan([str(export)], P, 4, work / "spool", rejects, ledger, progress=False, jobs=jobs)
    rejects.close()
    buckets = [sorted(read_bucket(work / "spool", b)) for b in range(128)]
    return (work / "rejects.jsonl").read_bytes(), buckets, ledger, rows


def test_parallel_scan_gives_what_one_scanner_gives(tmp_path, monkeypatch) -> None:
    entries = _entries(600)
    buf = io.BytesIO()
    write_jsonl([export_record(e, version=1) for e in entries], buf)
    lines = buf.getvalue().split(b"\n")
    for at in (5, 150, 151, 420, 599):
        lines[at] = lines[at].replace(b'"version":1', b'"version":"x"')
    lines.insert(300, b"")
    lines.insert(301, b"not json")
    export = tmp_path / "base.jsonl"
    export.write_bytes(b"\n".join(lines))
    (tmp_path / "one").mkdir()
    (tmp_path / "three").mkdir()
    one = _scan_with(1, export, tmp_path / "one", monkeypatch)
    three = _scan_with(3, export, tmp_path / "three", monkeypatch)
    assert list((tmp_path / "three" / "spool").glob("*.0002.bin"))  # three scanners did write
    assert one[0] == three[0] and one[0].count(b"\n") == 6
    assert one[1] == three[1] and sum(map(len, one[1])) == 595
    assert one[2] == three[2] and one[3] == three[3] == 601
