"""DICT budgets survive a worker restart (issue #14, item 7), through the real stack.

The DICT's buckets do not refill because a worker restarted: a client whose buckets start full
again sends what the DICT then refuses. Here the levels live in PostgreSQL, shared by the app id's
workers, so the restarted worker paces itself from where the last one left off.
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import PipelineFactory
from tests.integration.helpers import wait_answering
from vsync_stream.cli import request_verification
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
