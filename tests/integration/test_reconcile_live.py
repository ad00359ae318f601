"""Full-path reconciliation while events keep flowing (issue #14, item 1), through the real stack.

The DICT's CID file is its set at request time; the local CIDs are read seconds later while the
fold keeps folding live traffic. Keys created, updated or deleted in that window must not be
"corrected": only the divergences made behind the pipeline's back are, and the run converges.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.conftest import PipelineFactory
from tests.integration.helpers import diverge, served_vsyncs, truth, wait_converged
from tests.integration.live_traffic import LiveTraffic, frozen_keys, wait_phase
from tests.integration.test_pipeline import make_history
from vsync_stream.cli import request_verification, run_reconciliation
from vsync_stream.domain.events import Expectation, KeyChange, encode_change
from vsync_stream.simulator.population import generate_entries, random_update_changes

pytestmark = pytest.mark.integration

P1, P2 = "12345678", "00000208"


async def test_full_path_under_live_traffic_corrects_only_the_divergences(pipeline_factory: PipelineFactory) -> None:
    pipeline = await pipeline_factory(dict_limits=True, env_extra={"VSYNC_AUTO_RECONCILE": "false"})
    pipeline.simulator.cid_files.delay_s = 4.0  # seconds between the file's time and the local read
    events = make_history(pipeline, 1500, seed=31)
    await pipeline.publish(events)
    await pipeline.worker.wait_handled(len(events), timeout_s=300)
    frozen = frozen_keys(pipeline)
    kinds = diverge(pipeline)

    traffic = LiveTraffic(pipeline, frozen)
    stop = asyncio.Event()
    flowing = asyncio.ensure_future(traffic.run(stop))
    try:
        await asyncio.sleep(1.0)
        pending = [asyncio.ensure_future(run_reconciliation(pipeline.worker.base_url, pipeline.token, p, t,
                                                            progress=False, timeout_s=300))
                   for p, t in sorted(set(kinds.values()))]
        # Events flow from before the file's time until every run has diffed and explained its window;
        # they stop before the runs verify (a verification while events flow could not say OK).
        await wait_phase(pipeline, len(pending), "fetching the DICT's entries by CID")
    finally:
        stop.set()
        await flowing
    runs = await asyncio.gather(*pending)
    assert traffic.sent > 200
    by_pair = {(r["participant"], r["keyType"]): r for r in runs}
    assert {r["result"] for r in runs} == {"OK"}, runs
    assert {r["path"] for r in runs} == {"full"}
    # Exactly the divergences were corrected: nothing created, changed or deleted in the window.
    first = {pair: (r["added"], r["removed"], r["changed"]) for pair, r in by_pair.items()}
    assert first == {kinds["add"]: (1, 0, 0), kinds["remove"]: (0, 1, 0), kinds["replace"]: (0, 0, 1),
                     kinds["evp"]: (0, 1, 0)}, runs
    # The window was real: the DICT's log explained some differences, which were left to the pipeline.
    assert sum(r["deferred"] for r in runs) > 0, runs

    await wait_converged(pipeline, timeout_s=120)
    assert await served_vsyncs(pipeline) == truth(pipeline)
    rows = await request_verification(pipeline.worker.base_url, pipeline.token)
    assert {r["result"] for r in rows} == {"OK"}
    assert sum(pipeline.simulator.rejections.values()) == 0


async def test_a_correction_racing_a_newer_update_is_superseded_not_applied(
        pipeline_factory: PipelineFactory, kafka_bootstrap: str) -> None:
    """Item 2: a correction judged against a row that an update has changed since is not applied."""
    pipeline = await pipeline_factory(env_extra={"VSYNC_AUTO_RECONCILE": "false"})
    entries = list(generate_entries(40, [P1], seed=51))
    created = [pipeline.model.create(e) for e in entries]
    await pipeline.publish(created)
    await pipeline.worker.wait_handled(len(created), timeout_s=120)
    raced, kept = created[0], created[1]
    # What the reconciler read at diff time, for both keys.
    seen = {e.key: Expectation(e.entry.cid, e.version, e.occurred_at_ms, e.event_id)  # type: ignore[union-attr]
            for e in (raced, kept)}
    # While it fetches from the DICT, an update of the first key is folded.
    update = pipeline.model.update(raced.key, **random_update_changes(entries[0], random.Random(1)))
    await pipeline.publish([update])
    await pipeline.worker.wait_handled(len(created) + 1, timeout_s=60)
    # Its corrections arrive: remove both keys, each expecting the row seen at diff time. Only the
    # second key's row is unchanged (the DICT lost that key, so removing it is right).
    pipeline.model.tamper_delete(kept.key)
    corrections = [KeyChange(str(uuid.uuid4()), "key.deleted", int(time.time() * 1000), e.version, e.key, e.key_type,
                             e.participant, None, None, "RECONCILIATION", seen[e.key]) for e in (raced, kept)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for change in corrections:
            await producer.send_and_wait(pipeline.env["VSYNC_KEY_EVENTS_TOPIC"], encode_change(change),
                                         key=change.key.encode())
    finally:
        await producer.stop()
    counts = await pipeline.worker.wait_handled(len(created) + 3, timeout_s=60)
    assert counts["deadLettered"] == 0 and counts["stale"] == 1
    await wait_converged(pipeline, timeout_s=60)  # the updated key is still there, the lost one is gone
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{pipeline.worker.base_url}/metrics") as resp:
            metrics = await resp.text()
    assert "vsync_corrections_superseded_total 1.0" in metrics
