"""Reconciliation on NOK through the real stack: divergences of every kind are found and fixed.

The simulator enforces the DICT's real rate limits here, and the run must cause zero rejections.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from tests.integration.conftest import Pipeline, PipelineFactory
from tests.integration.helpers import diverge, served_vsyncs, truth
from tests.integration.test_pipeline import make_history
from vsync_stream.cli import request_verification, run_reconciliation

pytestmark = pytest.mark.integration

P1, P2 = "12345678", "00000208"


async def wait_reconciliations_done(pipeline: Pipeline, expected: int, timeout_s: float = 180) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(f"{pipeline.worker.base_url}/reconciliations") as resp:
                doc = await resp.json()
            if not doc["running"] and len(doc["recent"]) >= expected:
                return doc["recent"]
            await asyncio.sleep(1)
    raise AssertionError(f"reconciliations did not finish in {timeout_s} s; see {pipeline.worker.log_path}")


async def read_topic(bootstrap: str, topic: str, expected: int) -> list[dict]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"test-{uuid.uuid4().hex}", enable_auto_commit=False)
    await consumer.start()
    try:
        found: list[dict] = []
        deadline = time.monotonic() + 30
        while len(found) < expected and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                found += [orjson.loads(r.value) for r in records]
        return found
    finally:
        await consumer.stop()


async def test_nok_triggers_cheap_path_and_every_divergence_is_corrected(
        pipeline_factory: PipelineFactory, kafka_bootstrap: str, postgres_dsn: str) -> None:
    notices_topic = f"notices-{uuid.uuid4().hex[:8]}"
    pipeline = await pipeline_factory(dict_limits=True, env_extra={"VSYNC_CORE_NOTICES_TOPIC": notices_topic})
    events = make_history(pipeline, 2000, seed=21)
    await pipeline.publish(events)
    await pipeline.worker.wait_handled(len(events), timeout_s=300)
    rows = await request_verification(pipeline.worker.base_url, pipeline.token)
    assert {r["result"] for r in rows} == {"OK"}

    kinds = diverge(pipeline)
    rows = await request_verification(pipeline.worker.base_url, pipeline.token)
    assert sorted((r["participant"], r["keyType"]) for r in rows if r["result"] == "NOK") == sorted(kinds.values())

    runs = await wait_reconciliations_done(pipeline, expected=len(kinds))
    assert {(r["participant"], r["keyType"]) for r in runs} == set(kinds.values())
    assert {r["result"] for r in runs} == {"OK"} and {r["path"] for r in runs} == {"cheap"}
    by_pair = {(r["participant"], r["keyType"]): r for r in runs}
    assert (by_pair[kinds["add"]]["added"], by_pair[kinds["add"]]["removed"]) == (1, 0)
    assert (by_pair[kinds["remove"]]["added"], by_pair[kinds["remove"]]["removed"]) == (0, 1)
    assert by_pair[kinds["replace"]]["changed"] == 1
    assert by_pair[kinds["evp"]]["removed"] == 1

    # I5: local state equals the DICT's for every pair, and every pair verifies OK.
    assert await served_vsyncs(pipeline) == truth(pipeline)
    rows = await request_verification(pipeline.worker.base_url, pipeline.token)
    assert {r["result"] for r in rows} == {"OK"}
    assert sum(pipeline.simulator.rejections.values()) == 0  # the client paced itself

    notices = await read_topic(kafka_bootstrap, notices_topic, expected=4)
    assert sorted(n["action"] for n in notices) == ["add", "remove", "remove", "replace"]
    assert any("cannot be recreated" in n.get("note", "") for n in notices if n["keyType"] == "EVP")

    conn = await asyncpg.connect(postgres_dsn)
    try:
        stored = await conn.fetch("SELECT result, path FROM reconciliations WHERE id = ANY($1::uuid[])",
                                  [uuid.UUID(r["id"]) for r in runs])
    finally:
        await conn.close()
    assert len(stored) == len(kinds) and {(s["result"], s["path"]) for s in stored} == {("OK", "cheap")}


async def test_without_a_previous_ok_the_cid_file_path_reconciles(pipeline_factory: PipelineFactory) -> None:
    pipeline = await pipeline_factory(dict_limits=True, env_extra={"VSYNC_AUTO_RECONCILE": "false"})
    events = make_history(pipeline, 1500, seed=22)
    await pipeline.publish(events)
    await pipeline.worker.wait_handled(len(events), timeout_s=300)
    kinds = diverge(pipeline)
    for participant, key_type in sorted(set(kinds.values())):
        run = await run_reconciliation(pipeline.worker.base_url, pipeline.token, participant, key_type,
                                       progress=False, timeout_s=180)
        assert run["result"] == "OK" and run["path"] == "full", run
    assert await served_vsyncs(pipeline) == truth(pipeline)
    assert sum(pipeline.simulator.rejections.values()) == 0
