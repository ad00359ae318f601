"""Reconciliation with three workers: the worker-to-worker CID lookup carries megabytes (issue #14, item 3).

20,000 CIDs only local, spread over the partitions of three workers: the coordinator asks every
owner which keys hold them (``POST /internal/find-cids/{partition}``, a body of about 1.4 MB), so
a body read only in part (aiohttp hands over what arrived, 64 KiB at a time) fails the run.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from pathlib import Path

import pytest

from tests.integration.conftest import Pipeline, PipelineFactory
from tests.integration.helpers import served_vsyncs, truth
from tests.integration.test_scale_out import add_worker, wait_serving
from vsync_stream.cli import request_verification, run_reconciliation
from vsync_stream.domain.keys import KEY_TYPES
from vsync_stream.simulator.population import generate_entries

pytestmark = pytest.mark.integration

P1 = "12345678"
DIVERGENT = 20_000


async def test_twenty_thousand_divergent_cids_over_three_workers(pipeline_factory: PipelineFactory,
                                                                 tmp_path: Path) -> None:
    pipeline = await pipeline_factory(participants=[P1], partitions=6, env_extra={
        "VSYNC_AUTO_RECONCILE": "false", "VSYNC_CLUSTER_TOKEN": secrets.token_urlsafe(24)})
    entries = list(generate_entries(DIVERGENT + 2_000, [P1], seed=41))
    events = [pipeline.model.create(e) for e in entries]
    workers = [pipeline.worker, add_worker(pipeline, "b", tmp_path), add_worker(pipeline, "c", tmp_path)]
    await wait_serving(pipeline.worker, 3, timeout_s=180)
    await pipeline.publish(events)
    await wait_converged_counts(pipeline, len(events))

    # The DICT loses 20,000 entries behind the pipeline's back: every one is "only local".
    for entry in random.Random(42).sample(entries, DIVERGENT):
        pipeline.model.tamper_delete(entry.key)
    runs = await asyncio.gather(*[
        run_reconciliation(pipeline.worker.base_url, pipeline.token, P1, kt.value, progress=False, timeout_s=900)
        for kt in KEY_TYPES])
    assert {r["result"] for r in runs} == {"OK"}, [(r["keyType"], r["result"], r["error"]) for r in runs]
    assert {r["path"] for r in runs} == {"full"}
    assert sum(r["removed"] for r in runs) == DIVERGENT
    assert sum(r["added"] + r["changed"] for r in runs) == 0
    assert await served_vsyncs(pipeline) == truth(pipeline)
    rows = await request_verification(workers[1].base_url, pipeline.token)
    assert {r["result"] for r in rows} == {"OK"}


async def wait_converged_counts(pipeline: Pipeline, expected: int) -> None:
    """Wait until the three workers together serve ``expected`` entries (the fold has caught up)."""
    for _ in range(600):
        served = await served_vsyncs(pipeline)
        if served is not None and sum(n for _v, n in served.values()) == expected:
            assert served == truth(pipeline)
            return
        await asyncio.sleep(1)
    raise AssertionError(f"the workers did not fold {expected} creates; see {pipeline.worker.log_path}")
