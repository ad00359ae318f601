"""A worker's JSON log: one object per line, correlation ids on what matters, and no personal data.

A small pipeline runs with ``VSYNC_LOG_FORMAT=json`` through the events that log the most: folding
a population with updates and deletes, bad input dead-lettered (carrying a CPF and a name), a
verification round, a NOK and the reconciliation it starts. Then the whole log is scanned for the
population's tax ids, names and Pix keys, and for anything shaped like a tax id (11 or 14 digits
that are not part of a CID, a VSync or a UUID) — none may appear (DESIGN 5).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from typing import Any

import aiohttp
import orjson
import pytest

from tests.factories import event_doc
from tests.integration.conftest import Pipeline, PipelineFactory
from vsync_stream.cli import request_verification
from vsync_stream.domain.entry import Entry
from vsync_stream.simulator.population import generate_entries, random_update_changes

pytestmark = pytest.mark.integration

P1, P2 = "12345678", "00000208"
HEX_RUN = re.compile(r"[0-9a-fA-F]{32,}")  # CIDs and VSyncs (64 hex), hashes
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
TAX_ID_LIKE = re.compile(r"(?<![\d.])(?:\d{11}|\d{14})(?![\d.])")  # a float's digits are not a tax id


def personal_data(entries: list[Entry]) -> set[str]:
    """Tax ids, names, trade names and Pix keys of the entries."""
    values: set[str] = set()
    for entry in entries:
        values |= {entry.key, entry.owner_tax_id, entry.owner_name}
        if entry.owner_trade_name:
            values.add(entry.owner_trade_name)
    return values


async def wait_reconciled(pipeline: Pipeline, timeout_s: float = 120) -> list[dict[str, Any]]:
    """Wait until a reconciliation has finished on the worker; return the recent runs."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while time.monotonic() < deadline:
            async with session.get(f"{pipeline.worker.base_url}/reconciliations") as resp:
                doc = await resp.json()
            if doc["recent"] and not doc["running"]:
                runs: list[dict[str, Any]] = doc["recent"]
                return runs
            await asyncio.sleep(0.5)
    raise AssertionError(f"no reconciliation finished in {timeout_s} s; log {pipeline.worker.log_path}")


async def test_json_logs_carry_correlation_ids_and_no_personal_data(pipeline_factory: PipelineFactory) -> None:
    pipeline = await pipeline_factory(env_extra={"VSYNC_LOG_FORMAT": "json"})
    rng = random.Random(41)
    population = list(generate_entries(300, [P1, P2], seed=41))
    events = [pipeline.model.create(e) for e in population]
    events += [pipeline.model.update(e.key, **random_update_changes(e, rng)) for e in rng.sample(population, 30)]
    events += [pipeline.model.delete(e.key) for e in rng.sample(population, 20)]
    await pipeline.publish(events)
    # Bad input holding personal data: a CPF key with wrong check digits, and broken JSON with a name.
    bad_cpf = event_doc(entry__keyType="CPF", entry__key="52998224724")
    pipeline.publish_raw([("52998224724", orjson.dumps(bad_cpf)),
                          ("bad-json", b'{"owner": {"name": "Cec\xc3\xadlia Nogueira", "taxIdNumber": "39053344705"'),
                          ("bad-phone", orjson.dumps(event_doc(entry__key="+55119876543210000")))])
    await pipeline.worker.wait_handled(pipeline.published, timeout_s=300)

    rows = await request_verification(pipeline.worker.base_url, pipeline.token)
    assert {r["result"] for r in rows} == {"OK"}
    # The DICT changes an entry behind the pipeline's back: NOK, then the automatic reconciliation.
    target = next(e for e in pipeline.model.entries() if e.participant == P1 and e.key_type == "CPF")
    changed = pipeline.model.tamper_update(target.key, owner_name="Estêvão Damião Brandão")
    rows = await request_verification(pipeline.worker.base_url, pipeline.token)
    nok_round = next(r["roundId"] for r in rows if r["result"] == "NOK")
    runs = await wait_reconciled(pipeline)
    assert runs[0]["result"] == "OK", runs[0]
    async with aiohttp.ClientSession() as session:  # scrape and page views log nothing personal either
        for path in ("/metrics", "/status", "/vsync", "/verifications"):
            async with session.get(f"{pipeline.worker.base_url}{path}") as resp:
                assert resp.status == 200, path
    pipeline.worker.stop()

    lines = [ln for ln in pipeline.worker.log_path.read_text("utf-8").splitlines() if ln.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    assert len(records) >= 0.9 * len(lines), "most of the worker log should be JSON lines"
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)

    # Correlation ids: the rounds, the reconciliation (with the round that started it), dead letters.
    round_lines = [r for r in records if r.get("round_id") == nok_round]
    assert any("verification round" in r["msg"] for r in round_lines)
    recon = [r for r in records if r.get("reconciliation_id") == runs[0]["id"]]
    assert recon and recon[0]["round_id"] == nok_round, "a NOK's reconciliation carries the round id of the NOK"
    # ... and its own verification is a round of its own, tagged with the reconciliation id.
    assert any(r["round_id"] != nok_round and "verification round" in r["msg"] for r in recon)
    assert any("correction sent" in r["msg"] and r.get("event_id") for r in recon)
    dead = [r for r in records if r.get("stage") == "adapter" and r.get("reason")]
    assert {r["reason"] for r in dead} >= {"cpf_check_digits", "not_json"}
    assert any(r.get("event_id") == bad_cpf["eventId"] for r in dead)

    # No personal data anywhere in the log, JSON or not.
    forbidden = personal_data(population + pipeline.model.entries() + [changed])
    # (The bad events' own values; not "+5511987654321": the contract's example, quoted by a reason text.)
    forbidden |= {"52998224724", "11122233300", "João Silva", "Cecília Nogueira", "39053344705",
                  "+55119876543210000"}
    text = "\n".join(lines)
    leaked = sorted(value for value in forbidden if value in text)
    assert not leaked, f"personal data in the worker log {pipeline.worker.log_path}: {leaked[:10]}"
    scrubbed = UUID.sub("", HEX_RUN.sub("", text))
    tax_like = sorted(set(TAX_ID_LIKE.findall(scrubbed)))
    assert not tax_like, f"tax-id-like numbers in the worker log {pipeline.worker.log_path}: {tax_like[:10]}"
