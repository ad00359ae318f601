"""Bootstrap through the real stack: the hand-off to the live stream, rejects, and SIGKILL + rerun."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import random
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.integration.conftest import Pipeline, PipelineFactory
from tests.integration.helpers import read_topic, truth, wait_converged
from vsync_stream.cli import request_verification
from vsync_stream.domain.export import export_record, write_csv, write_jsonl
from vsync_stream.domain.fold import EntryState
from vsync_stream.names import changelog_topic
from vsync_stream.simulator.population import PopulationGenerator, generate_entries, random_update_changes

pytestmark = pytest.mark.integration
PARTICIPANTS = ["12345678", "00000208"]


async def _cli(pipeline: Pipeline, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "vsync_stream", "bootstrap", "--no-progress",
                                                *args, env=pipeline.env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)


async def _run(pipeline: Pipeline, *args: str) -> tuple[int, str]:
    proc = await _cli(pipeline, *args)
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def _export(pipeline: Pipeline, path: Path, extra: list[bytes] = ()) -> int:  # type: ignore[assignment]
    """The participant's base as of now: every active entry with the version of its last event."""
    records = [export_record(e, version=pipeline.model.version(e.key)) for e in pipeline.model.entries()]
    with path.open("wb") as out:
        write_jsonl(records, out)
        for line in extra:
            out.write(line + b"\n")
    return len(records)


async def test_snapshot_loaded_while_events_flow_ends_exact(pipeline_factory: PipelineFactory, tmp_path: Path) -> None:
    pipeline = await pipeline_factory(participants=PARTICIPANTS, partitions=4, start=False)
    model, rng = pipeline.model, random.Random(13)
    code, out = await _run(pipeline, "--prepare")  # step 1: subscription + checks, before the export
    assert code == 0, out
    population = list(generate_entries(6000, PARTICIPANTS, seed=13))
    history = [model.create(e) for e in population[:4000]]  # before the subscription: never published
    # After the subscription and before the export: published, and also reflected in the export.
    before = [model.create(e) for e in population[4000:]]
    before += [model.update(e.key, **random_update_changes(e, rng)) for e in rng.sample(population, 500)]
    before += [model.delete(e.key) for e in rng.sample(population[:4000], 200)]
    await pipeline.publish(before)
    export = tmp_path / "base.jsonl"
    exported = _export(pipeline, export)
    assert exported == 6000 - 200
    # A create from before the subscription whose key changed since: older than its snapshot row.
    stale_replay = next(h for h in history if model.version(h.key) >= 2 and model.entry(h.key) is not None)

    load = await _cli(pipeline, "--rejects", str(tmp_path / "rejects.jsonl"), "--summary", str(tmp_path / "s.json"),
                      str(export))
    # Events of the same keys while the load runs: updates, deletes, re-creations, new keys.
    during = []
    alive = [e for e in population if model.entry(e.key) is not None]
    for e in rng.sample(alive, 600):
        during.append(model.update(e.key, **random_update_changes(model.entry(e.key), rng)))
    for e in rng.sample(alive, 300):
        if model.entry(e.key) is not None:
            during.append(model.delete(e.key))
    generator = PopulationGenerator(PARTICIPANTS, seed=99)
    for _ in range(300):
        fresh = generator.entry()
        if model.entry(fresh.key) is None:
            during.append(model.create(fresh))
    await pipeline.publish(during)
    out, _ = await load.communicate()
    assert load.returncode == 0, out.decode()
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["loaded"] == exported and summary["rejected"] == 0
    assert not (tmp_path / "rejects.jsonl.spool").exists()
    # The replays of what the export already holds are stale or no-ops; the rest applies.
    late = [model.update(e.key, **random_update_changes(model.entry(e.key), rng))
            for e in rng.sample([e for e in population if model.entry(e.key) is not None], 100)]
    await pipeline.publish([stale_replay, *late])

    pipeline.worker.start()
    await pipeline.worker.wait_ready(timeout_s=180)
    await wait_converged(pipeline, timeout_s=180)
    rows = await request_verification(pipeline.worker.base_url, pipeline.token)
    assert {(r["participant"], r["keyType"]): r["result"] for r in rows} == {pair: "OK" for pair in truth(pipeline)}
    assert model.verifications() and all(v.result == "OK" for v in model.verifications())
    async with aiohttp.ClientSession() as session:
        health = await pipeline.worker.health(session)
    assert health is not None and health["events"]["stale"] >= 1  # stale_replay at least


async def _changelog_rows(bootstrap: str, app_id: str) -> dict[bytes, bytes]:
    rows: dict[bytes, bytes] = {}
    for record in sorted(await read_topic(bootstrap, changelog_topic(app_id)), key=lambda r: (r.partition, r.offset)):
        rows[record.key] = record.value
    return rows


def _bad_rows(pipeline: Pipeline) -> list[bytes]:
    some = pipeline.model.entries()[:3]
    return [
        json.dumps(export_record(some[0], version=9)).encode(),  # duplicate of a key already in the export
        json.dumps({**export_record(some[1], version=1), "participant": "99999999"}).encode(),  # unknown participant
        json.dumps({**export_record(some[2], version=1), "keyType": "CPF"}).encode(),  # key of the wrong type
        b'{"keyType": "EVP", "key": "\xff"}',  # not UTF-8
    ]


async def _wait_state(state: Path, proc: asyncio.subprocess.Process, phase: str, buckets: int = 0) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            doc = json.loads(state.read_text())
        except (FileNotFoundError, ValueError):
            doc = {}
        if doc.get("phase") == phase and doc.get("bucketsDone", 0) >= buckets:
            return doc
        assert proc.returncode is None, "the load ended before it could be interrupted"
        await asyncio.sleep(0.01)
    raise AssertionError(f"the load never reached phase {phase}")


async def test_sigkill_mid_load_then_rerun_ends_in_the_uninterrupted_state(pipeline_factory: PipelineFactory,
                                                                         kafka_bootstrap: str, tmp_path: Path) -> None:
    clean = await pipeline_factory(participants=PARTICIPANTS, partitions=4, start=False)
    killed = await pipeline_factory(participants=PARTICIPANTS, partitions=4, start=False, model=clean.model)
    for entry in generate_entries(40_000, PARTICIPANTS, seed=21):
        clean.model.create(entry)
    export = tmp_path / "base.jsonl"
    exported = _export(clean, export, extra=_bad_rows(clean))

    a = ["--rejects", str(tmp_path / "a" / "rejects.jsonl"), "--summary", str(tmp_path / "a.json"), str(export)]
    code_a, out_a = await _run(clean, *a)
    assert code_a == 1, out_a  # rows were rejected

    b = ["--rejects", str(tmp_path / "b" / "rejects.jsonl"), "--summary", str(tmp_path / "b.json"), str(export)]
    state = tmp_path / "b" / "rejects.jsonl.state"
    proc = await _cli(killed, *b)
    await _wait_state(state, proc, "scan")
    await asyncio.sleep(0.3)
    proc.kill()  # SIGKILL during the scan
    await proc.wait()
    proc = await _cli(killed, *b)
    doc = await _wait_state(state, proc, "load", buckets=2)
    proc.kill()  # SIGKILL during the load
    await proc.wait()
    after_kill = json.loads(state.read_text())
    assert after_kill["phase"] == "load" and after_kill["bucketsDone"] < 4 * 32, doc
    code_b, out_b = await _run(killed, *b)
    assert code_b == 1, out_b

    assert (tmp_path / "a" / "rejects.jsonl").read_bytes() == (tmp_path / "b" / "rejects.jsonl").read_bytes()
    summary_a, summary_b = (json.loads((tmp_path / f"{x}.json").read_text()) for x in "ab")
    summary_a.pop("rejectsFile"), summary_b.pop("rejectsFile")
    assert summary_a["changelog"] != summary_b["changelog"]
    summary_a.pop("changelog"), summary_b.pop("changelog")
    assert summary_a == summary_b
    assert summary_a["loaded"] == exported - 1  # the duplicated key is rejected on both of its rows
    rejects = [json.loads(line) for line in (tmp_path / "a" / "rejects.jsonl").read_text().splitlines()]
    codes = sorted(r["code"] for r in rejects)
    assert codes == sorted(["duplicate_key", "duplicate_key", "unknown_participant", "key_format", "not_utf8"])
    assert {r["line"] for r in rejects if r["code"] == "duplicate_key"} == {1, exported + 1}

    rows_a = await _changelog_rows(kafka_bootstrap, clean.env["VSYNC_APP_ID"])
    rows_b = await _changelog_rows(kafka_bootstrap, killed.env["VSYNC_APP_ID"])
    assert rows_a == rows_b and len(rows_a) == exported - 1
    by_pair = {(r["participant"], r["keyType"]): (r["vsync"], r["entries"]) for r in summary_a["pairs"]}
    from vsync_stream.domain.vsync import VSyncLedger
    ledger = VSyncLedger()
    for value in rows_a.values():
        s = EntryState.decode(value)
        ledger.add(s.participant, s.key_type, s.cid)
    assert by_pair == {pair: (f"{ledger.vsync(*pair):064x}", ledger.count(*pair)) for pair in by_pair}

    code_again, out_again = await _run(killed, *b)  # a finished load: the same summary and exit code again
    assert code_again == 1 and str(summary_b["loaded"]) in out_again
    refused, message = await _run(killed, "--rejects", str(tmp_path / "c" / "r.jsonl"), str(export))
    assert refused == 2 and "already holds records" in message  # a new load into a table that is not empty


async def test_preflight_counts_each_side_against_the_dicts_cid_files(pipeline_factory: PipelineFactory,
                                                                      tmp_path: Path) -> None:
    pipeline = await pipeline_factory(participants=PARTICIPANTS, partitions=4, start=False)
    model = pipeline.model
    for entry in generate_entries(3000, PARTICIPANTS, seed=31):
        model.create(entry)
    entries = model.entries()
    missing = entries[:3]  # at the DICT, not in the export
    changed = entries[3]  # in both, with another account in the export
    generator = PopulationGenerator(PARTICIPANTS, seed=32)
    extra = [e for e in (generator.entry() for _ in range(2)) if model.entry(e.key) is None]  # only in the export
    records = [export_record(e, version=1) for e in entries[4:]]
    records += [{**export_record(changed, version=1), "accountNumber": "99999999"}]
    records += [export_record(e, version=1) for e in extra]
    export = tmp_path / "base.jsonl"
    with export.open("wb") as out:
        write_jsonl(records, out)
        out.write(b'{"keyType": "CPF"}\n')  # a row bootstrap would reject: not counted
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "vsync_stream", "preflight", "--json",
                                                str(export), env=pipeline.env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 1, err.decode()  # some pairs differ
    rows = {(r["participant"], r["keyType"]): r for r in json.loads(out)}
    assert set(rows) == set(truth(pipeline))
    expected: dict[tuple[str, str], dict[str, int]] = {
        pair: {"export": 0, "dict": model.count(*pair), "onlyExport": 0, "onlyDict": 0} for pair in rows}
    for e in missing:
        expected[(e.participant, e.key_type)]["onlyDict"] += 1
    expected[(changed.participant, changed.key_type)]["onlyDict"] += 1
    expected[(changed.participant, changed.key_type)]["onlyExport"] += 1
    for record in records:
        expected[(record["participant"], record["keyType"])]["export"] += 1
    for e in extra:
        expected[(e.participant, e.key_type)]["onlyExport"] += 1
    for pair, row in rows.items():
        want = expected[pair]
        assert {k: row[k] for k in want} == want, pair
        assert row["common"] == row["dict"] - row["onlyDict"] == row["export"] - row["onlyExport"]
        assert row["dictVsync"] == model.vsync(*pair)


async def test_not_an_export_stops_before_loading_then_the_right_file_loads(pipeline_factory: PipelineFactory,
                                                                            kafka_bootstrap: str,
                                                                            tmp_path: Path) -> None:
    pipeline = await pipeline_factory(participants=PARTICIPANTS, partitions=4, start=False)
    for entry in generate_entries(500, PARTICIPANTS, seed=41):
        pipeline.model.create(entry)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("keyType,key,colour\nEVP,x,blue\n")
    rejects = tmp_path / "rejects.jsonl"
    code, out = await _run(pipeline, "--rejects", str(rejects), str(wrong))
    assert code == 2 and "line 1" in out and "colour" in out, out
    assert await _changelog_rows(kafka_bootstrap, pipeline.env["VSYNC_APP_ID"]) == {}  # nothing loaded
    export = tmp_path / "base.csv.gz"
    text = io.StringIO()
    write_csv([export_record(e, version=1) for e in pipeline.model.entries()], text)
    export.write_bytes(gzip.compress(text.getvalue().encode()))
    code, out = await _run(pipeline, "--rejects", str(rejects), "--summary", str(tmp_path / "s.json"), str(export))
    assert code == 0, out
    assert len(await _changelog_rows(kafka_bootstrap, pipeline.env["VSYNC_APP_ID"])) == 500
    assert rejects.read_bytes() == b""
