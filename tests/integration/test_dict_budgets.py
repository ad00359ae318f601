"""DICT budgets survive a worker restart (issue #14, item 7), through the real stack.

The DICT's buckets do not refill because a worker restarted: a client whose buckets start full
again sends what the DICT then refuses. Here the levels live in PostgreSQL, shared by the app id's
workers, so the restarted worker paces itself from where the last one left off.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.integration.conftest import PipelineFactory
from tests.integration.helpers import wait_answering
from vsync_stream.bridges.pacing import RateLimit
from vsync_stream.cli import cancel_reconciliation, request_verification, run_reconciliation
from vsync_stream.simulator.population import generate_entries
from vsync_stream.simulator.server import TokenBucket

pytestmark = pytest.mark.integration

P1 = "12345678"


async def test_a_restarted_worker_does_not_start_with_full_buckets(pipeline_factory: PipelineFactory) -> None:
    # VerifySync scaled down: 12 per minute into a bucket of 10 (the client keeps 1 in reserve).
    pipeline = await pipeline_factory(participants=[P1], env_extra={
        "VSYNC_BRIDGE_RATE_LIMITS": "VerifySync=12/min:10", "VSYNC_AUTO_RECONCILE": "false"})
    pipeline.simulator.rate_limits["VerifySync"] = TokenBucket.per_minute(12, 10)
    events = [pipeline.model.create(e) for e in generate_entries(50, [P1], seed=61)]
    await pipeline.publish(events)
    await pipeline.worker.wait_handled(len(events), timeout_s=120)
    for _ in range(2):  # 10 of the DICT's 10 tokens (5 pairs a round)
        rows = await request_verification(pipeline.worker.base_url, pipeline.token)
        assert {r["result"] for r in rows} == {"OK"}

    pipeline.worker.stop()
    pipeline.worker.start()
    await wait_answering(pipeline.worker, timeout_s=120)
    rows = await request_verification(pipeline.worker.base_url, pipeline.token, timeout_s=180)
    assert {r["result"] for r in rows} == {"OK"}
    assert sum(pipeline.simulator.rejections.values()) == 0, pipeline.simulator.rejections


async def test_a_run_waiting_for_the_cid_file_budget_says_why_and_can_be_cancelled(
        pipeline_factory: PipelineFactory, postgres_dsn: str) -> None:
    # The CID file budget scaled down to 2 files, refilled 1 an hour (the client keeps 1 in reserve).
    pipeline = await pipeline_factory(participants=[P1], env_extra={
        "VSYNC_BRIDGE_RATE_LIMITS": "CreateCidFile=1/h:2", "VSYNC_AUTO_RECONCILE": "false"})
    pipeline.simulator.rate_limits["CreateCidFile"] = TokenBucket.from_limit(RateLimit.per_day(24, 2))
    events = [pipeline.model.create(e) for e in generate_entries(50, [P1], seed=62)]
    await pipeline.publish(events)
    await pipeline.worker.wait_handled(len(events), timeout_s=120)
    base, token = pipeline.worker.base_url, pipeline.token
    first = await run_reconciliation(base, token, P1, "CPF", progress=False, timeout_s=120)
    assert first["result"] == "OK" and first["path"] == "full"  # the one usable file of the budget

    async with aiohttp.ClientSession() as session:
        async def start(key_type: str) -> dict[str, Any]:
            async with session.post(f"{base}/reconcile", json={"participant": P1, "keyType": key_type},
                                    headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 202
                return dict(await resp.json())

        async def get(run_id: str) -> dict[str, Any]:
            async with session.get(f"{base}/reconciliations/{run_id}") as resp:
                return dict(await resp.json())

        waiting = await start("EMAIL")
        for _ in range(100):
            run = await get(waiting["id"])
            if run["state"] == "waiting":
                break
            await asyncio.sleep(0.2)
        assert run["state"] == "waiting" and "CID file budget" in run["waitingFor"], run
        assert run["phase"] == "waiting for the DICT's CID file budget"
        async with session.post(f"{base}/reconciliations/{waiting['id']}/cancel") as resp:
            assert resp.status == 401  # cancelling needs the operate scope
        cancelled = await cancel_reconciliation(base, token, waiting["id"])
        assert cancelled["id"] == waiting["id"]
        for _ in range(50):
            run = await get(waiting["id"])
            if run["finishedAt"]:
                break
            await asyncio.sleep(0.2)
        assert (run["state"], run["result"], run["waitingFor"]) == ("cancelled", "CANCELLED", None), run
        # The pair is free again at once: a new run starts (and waits, the budget being still spent).
        again = await start("EMAIL")
        assert again["id"] != waiting["id"]
        await cancel_reconciliation(base, token, again["id"])
    conn = await asyncpg.connect(postgres_dsn)
    try:
        result = await conn.fetchval("SELECT result FROM reconciliations WHERE id = $1", uuid.UUID(waiting["id"]))
    finally:
        await conn.close()
    assert result == "CANCELLED"
    assert sum(pipeline.simulator.rejections.values()) == 0
