"""Chaos on the adapter: SIGKILL of adapter processes during saturation (issue #15, invariant I3).

Real Kafka, Pulsar, PostgreSQL, the gRPC simulator and real processes: a worker with its adapter off
and ``vsync-stream adapter --concurrency 2`` beside it on the KeyShared subscription. While the
history is published as fast as the publisher can, one adapter child is SIGKILLed (its supervisor
starts another), then the supervisor and all its children at once (a new adapter is started).
Pulsar is acknowledged only after Kafka acknowledged, so nothing may be lost; what was in Kafka and
not yet acknowledged on Pulsar is redelivered and must be absorbed by the fold as duplicates.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Pipeline, PipelineFactory
from tests.integration.helpers import read_topic, wait_converged
from vsync_stream.domain.events import decode_change
from vsync_stream.simulator.population import generate_entries, random_update_changes

pytestmark = pytest.mark.integration

P1, P2 = "12345678", "00000208"


def history(pipeline: Pipeline, n: int, seed: int) -> list[Any]:
    rng = random.Random(seed)
    entries = list(generate_entries(n, [P1, P2], seed=seed))
    events = [pipeline.model.create(e) for e in entries]
    events += [pipeline.model.update(e.key, **random_update_changes(e, rng)) for e in rng.sample(entries, n // 5)]
    events += [pipeline.model.delete(e.key) for e in rng.sample(entries, n // 10)]
    return events


def start_adapter(pipeline: Pipeline, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "vsync_stream", "adapter", "--concurrency", "2"],
                                env=pipeline.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


async def handled(pipeline: Pipeline) -> int:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        doc = await pipeline.worker.health(session)
    if doc is None:
        return 0
    c = doc["events"]
    return int(c["folded"] + c["duplicate"] + c["stale"] + c["deadLettered"])


async def wait_for(cond: Any, timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_sigkill_of_adapter_processes_loses_nothing(pipeline_factory: PipelineFactory, kafka_bootstrap: str,
                                                          tmp_path: Path) -> None:
    pipeline = await pipeline_factory(env_extra={"VSYNC_ADAPTER_ENABLED": "false"})
    events = history(pipeline, 15_000, seed=15)
    published_ids = {e.event_id for e in events}
    log = tmp_path / "adapter.log"
    adapter = start_adapter(pipeline, log)
    second: subprocess.Popen[bytes] | None = None
    try:
        await pipeline.worker.wait_ready(120)

        async def two_children() -> bool:
            return len(children(adapter.pid)) == 2

        await wait_for(two_children, 60, "two adapter processes")
        publishing = asyncio.create_task(pipeline.publish(events))

        async def progressed(at: int) -> Any:
            async def check() -> bool:
                return await handled(pipeline) >= at or publishing.done()
            return check

        # 1. one adapter child SIGKILLed mid-stream; the supervisor starts another
        await wait_for(await progressed(len(events) // 5), 300, "a fifth of the events")
        victim = children(adapter.pid)[0]
        os.kill(victim, signal.SIGKILL)

        async def replaced() -> bool:
            kids = children(adapter.pid)
            return len(kids) == 2 and victim not in kids

        await wait_for(replaced, 60, "the supervisor to replace the killed adapter process")
        # 2. the supervisor and both children SIGKILLed at once; a new adapter takes over
        await wait_for(await progressed(len(events) // 2), 300, "half of the events")
        os.killpg(adapter.pid, signal.SIGKILL)
        adapter.wait()
        second = start_adapter(pipeline, log)
        await publishing
        assert pipeline.published == len(events)

        # Converged: the served VSync of every pair is the simulator's (I1) — exact after the kills.
        await wait_converged(pipeline, timeout_s=300)
        records = await read_topic(kafka_bootstrap, pipeline.env["VSYNC_KEY_EVENTS_TOPIC"])

        async def all_handled() -> bool:
            return await handled(pipeline) >= len(records)

        await wait_for(all_handled, 120, "the fold to handle every key-events record")
    finally:
        for proc in (adapter, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)

    in_kafka = [decode_change(r.value).event_id for r in records]
    # Nothing lost (I3): every published event reached Kafka; only events reached it.
    assert set(in_kafka) == published_ids
    import aiohttp

    async with aiohttp.ClientSession() as session:
        doc = await pipeline.worker.health(session)
    assert doc is not None
    c = doc["events"]
    # Every record was handled once; the redelivered ones (and only they) were absorbed (I2).
    assert c["folded"] + c["duplicate"] + c["stale"] + c["deadLettered"] == len(records)
    assert c["folded"] == len(events)
    assert c["duplicate"] + c["stale"] == len(records) - len(events)
    assert c["deadLettered"] == 0
    print(f"published {len(events)}, key-events records {len(records)} "
          f"({len(records) - len(events)} redelivered), folded {c['folded']}, duplicate {c['duplicate']}, "
          f"stale {c['stale']}")
