"""Recovery edge cases on real Kafka: a compacted changelog, empty changelog partitions, stale RocksDB locks,
key events deleted by retention before they were folded.

Each test ends with the served VSync of every (participant, key type) equal to the simulator's and
the simulator answering OK.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete

from tests.integration.conftest import Pipeline, PipelineFactory
from tests.integration.helpers import (
    check_worker_alive,
    end_offsets,
    group_lag,
    read_topic,
    wait_answering,
    wait_converged,
)
from vsync_stream.cli import request_verification
from vsync_stream.domain.events import KeyEvent, change_of, encode_change
from vsync_stream.simulator.model import DictModel
from vsync_stream.simulator.population import generate_entries, random_update_changes

pytestmark = pytest.mark.integration

# Topic settings that make Kafka's log cleaner compact within seconds (INFRA.md; the local stack
# sets log.cleaner.backoff.ms=1000 in deploy/local/kafka/server.properties.in).
EAGER_COMPACTION = {
    "cleanup.policy": "compact",
    "segment.ms": "100",
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": "100",
}
COMPACTION_DEADLINE_S = 120.0


def changelog_of(pipeline: Pipeline) -> str:
    return f"{pipeline.env['VSYNC_APP_ID']}-entries-changelog"


async def create_topic(bootstrap: str, name: str, partitions: int, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
    finally:
        await admin.close()


async def verify_all_ok(pipeline: Pipeline) -> None:
    rows = await request_verification(pipeline.worker.base_url, pipeline.token)
    bad = sorted((r["participant"], r["keyType"]) for r in rows if r["result"] != "OK")
    assert not bad, f"the simulator answered NOK for {bad}; log {pipeline.worker.log_path}"


async def ledger_check(pipeline: Pipeline) -> dict[str, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.post(f"{pipeline.worker.base_url}/ledger-check",
                                headers={"Authorization": f"Bearer {pipeline.token}"}) as resp:
            assert resp.status == 200, f"/ledger-check answered {resp.status}; log {pipeline.worker.log_path}"
            doc: dict[str, Any] = await resp.json()
            return doc


async def restart_without_state(pipeline: Pipeline) -> None:
    """Stop the worker, delete its data dir (RocksDB), start it again: it must restore from Kafka."""
    pipeline.worker.stop()
    shutil.rmtree(Path(pipeline.env["VSYNC_DATA_DIR"]))
    pipeline.worker.start()
    await pipeline.worker.wait_ready(timeout_s=180)


async def wait_compacted(bootstrap: str, topic: str, timeout_s: float) -> tuple[int, int]:
    """Wait until Kafka's cleaner removed at least half of the records ever written to ``topic``.

    Returns:
        (offsets written, records still readable).

    Raises:
        AssertionError: no such compaction by the deadline.
    """
    deadline = time.monotonic() + timeout_s
    written = readable = 0
    while time.monotonic() < deadline:
        written = sum((await end_offsets(bootstrap, topic)).values())
        readable = len(await read_topic(bootstrap, topic))
        if readable * 2 <= written:
            return written, readable
        await asyncio.sleep(2)
    raise AssertionError(f"{topic}: still {readable} of {written} records readable after {timeout_s:.0f} s; "
                         "the log cleaner did not compact (is log.cleaner.backoff.ms low on this broker?)")


async def test_restore_from_a_compacted_changelog_with_no_local_state(pipeline_factory: PipelineFactory,
                                                                     kafka_bootstrap: str) -> None:
    pipeline = await pipeline_factory(partitions=4, start=False)
    changelog = changelog_of(pipeline)
    # The worker accepts an existing changelog that is compacted (bridges/kafka_topics.py).
    await create_topic(kafka_bootstrap, changelog, 4, EAGER_COMPACTION)
    pipeline.worker.start()
    await pipeline.worker.wait_ready(timeout_s=180)

    rng = random.Random(31)
    entries = list(generate_entries(24, ["12345678", "00000208"], seed=31))
    history = [pipeline.model.create(e) for e in entries]
    await pipeline.publish(history)
    for _wave in range(40):  # many updates of the same keys, spread out so segments roll (segment.ms=100)
        wave = []
        for e in entries:
            current = pipeline.model.entry(e.key)
            assert current is not None
            wave.append(pipeline.model.update(e.key, **random_update_changes(current, rng)))
        await pipeline.publish(wave)
        history += wave
        await asyncio.sleep(0.15)  # pacing: lets segment.ms pass between waves
    await wait_converged(pipeline, timeout_s=120)

    written, readable = await wait_compacted(kafka_bootstrap, changelog, COMPACTION_DEADLINE_S)
    print(f"\nchangelog {changelog}: {written} records written, {readable} left after compaction "
          f"({len(entries)} keys, {len(history)} events)")
    assert readable < written

    await restart_without_state(pipeline)
    await wait_converged(pipeline, timeout_s=120)
    # The restored rows kept their ordering tokens: replays of old events are stale, new ones apply.
    await pipeline.publish(rng.sample(history[: len(entries) * 10], 50))
    fresh = []
    for e in entries[:8]:
        current = pipeline.model.entry(e.key)
        assert current is not None
        fresh.append(pipeline.model.update(e.key, **random_update_changes(current, rng)))
    fresh.append(pipeline.model.delete(entries[9].key))
    await pipeline.publish(fresh)
    await wait_converged(pipeline, timeout_s=120)
    await verify_all_ok(pipeline)


async def test_empty_changelog_partitions_restore_and_contribute_nothing(pipeline_factory: PipelineFactory,
                                                                        kafka_bootstrap: str) -> None:
    pipeline = await pipeline_factory(partitions=8)
    entries = list(generate_entries(3, ["12345678", "00000208"], seed=32))
    events = [pipeline.model.create(e) for e in entries]
    events.append(pipeline.model.update(entries[0].key, account_number="123456"))
    await pipeline.publish(events)
    await pipeline.worker.wait_ready(timeout_s=180)
    await wait_converged(pipeline, timeout_s=120)

    sizes = await end_offsets(kafka_bootstrap, changelog_of(pipeline))
    empty = sorted(p for p, n in sizes.items() if n == 0)
    assert len(sizes) == 8 and len(empty) >= 5, f"changelog partition sizes {sizes}"

    # Restart on the same state (no persisted offset for the empty partitions), then from nothing.
    pipeline.worker.stop()
    pipeline.worker.start()
    await pipeline.worker.wait_ready(timeout_s=180)
    await wait_converged(pipeline, timeout_s=60)
    await restart_without_state(pipeline)
    await wait_converged(pipeline, timeout_s=60)

    check = await ledger_check(pipeline)
    assert check["partitions"] == list(range(8)) and check["drifted"] == []
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{pipeline.worker.base_url}/vsync") as resp:
            offsets = (await resp.json())["offsets"]
    assert sorted(int(p) for p in offsets) == list(range(8))
    await verify_all_ok(pipeline)

    # The empty partitions still take new keys after the restore.
    more = [pipeline.model.create(e) for e in generate_entries(40, ["12345678", "00000208"], seed=33)
            if pipeline.model.entry(e.key) is None]
    await pipeline.publish(more)
    await wait_converged(pipeline, timeout_s=120)
    await verify_all_ok(pipeline)


async def test_rocksdb_left_by_a_sigkilled_worker_is_reused(pipeline_factory: PipelineFactory) -> None:
    pipeline = await pipeline_factory(partitions=4)
    rng = random.Random(34)
    entries = list(generate_entries(4000, ["12345678", "00000208"], seed=34))
    events = [pipeline.model.create(e) for e in entries]
    events += [pipeline.model.update(e.key, **random_update_changes(e, rng)) for e in rng.sample(entries, 800)]
    events += [pipeline.model.delete(e.key) for e in rng.sample(entries, 300)]
    publishing = asyncio.create_task(pipeline.publish(events))
    await pipeline.worker.wait_ready(timeout_s=180)
    await pipeline.worker.wait_handled(1000, timeout_s=180)
    pipeline.worker.kill()  # mid-stream: RocksDB open, writes in flight

    data_dir = Path(pipeline.env["VSYNC_DATA_DIR"])
    locks = sorted(data_dir.rglob("LOCK"))
    assert locks, f"no RocksDB LOCK file under {data_dir}"

    # Killed again while it restarts (web view up, table still opening and recovering), then for good.
    pipeline.worker.start()
    await wait_answering(pipeline.worker, timeout_s=120)
    pipeline.worker.kill()
    assert sorted(data_dir.rglob("LOCK")) == locks
    await publishing
    pipeline.worker.start()
    await pipeline.worker.wait_ready(timeout_s=180)
    await wait_converged(pipeline, timeout_s=180)
    check = await ledger_check(pipeline)
    assert check["drifted"] == []
    await verify_all_ok(pipeline)


async def produce_key_events(bootstrap: str, topic: str, events: list[KeyEvent]) -> list[int]:
    """Write events to partition 0 of the key-events topic as the adapter would; their offsets, in order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sent = [await producer.send(topic, value=encode_change(change_of(e)), key=e.key.encode("utf-8"), partition=0)
                for e in events]
        return [(await fut).offset for fut in sent]
    finally:
        await producer.stop()


async def delete_records_before(bootstrap: str, topic: str, partition: int, offset: int) -> int:
    """Delete a partition's records before ``offset`` (what retention does); its new log start offset."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        tp = TopicPartition(topic, partition)
        low = await admin.delete_records({tp: RecordsToDelete(before_offset=offset)})
    finally:
        await admin.close()
    return low[tp]


async def test_events_deleted_by_retention_before_the_fold_are_skipped_once(pipeline_factory: PipelineFactory,
                                                                           kafka_bootstrap: str) -> None:
    # One partition, events written straight to Kafka (no Pulsar adapter): every offset is known.
    pipeline = await pipeline_factory(partitions=1, env_extra={"VSYNC_ADAPTER_ENABLED": "false"})
    topic = pipeline.env["VSYNC_KEY_EVENTS_TOPIC"]
    worker = pipeline.worker
    await worker.wait_ready(timeout_s=180)
    entries = list(generate_entries(300, ["12345678", "00000208"], seed=35))
    folded_before, lost, after = entries[:100], entries[100:200], entries[200:]

    first = await produce_key_events(kafka_bootstrap, topic, [pipeline.model.create(e) for e in folded_before])
    assert first == list(range(100))
    await worker.wait_handled(100, timeout_s=120)
    await wait_converged(pipeline, timeout_s=60)
    worker.stop()

    # While the worker is down: 100 events that retention deletes before they are folded (the DICT
    # of this test never had them, so the served VSync must match it without them), then 100 more.
    gone = await produce_key_events(kafka_bootstrap, topic, [DictModel().create(e) for e in lost])
    kept = await produce_key_events(kafka_bootstrap, topic, [pipeline.model.create(e) for e in after])
    assert gone == list(range(100, 200)) and kept == list(range(200, 300))
    assert await delete_records_before(kafka_bootstrap, topic, 0, 200) == 200

    # The table folded up to offset 99; the topic now starts at 200. The worker goes back to 100
    # once, finds the topic still starts at 200, says so, and folds on from there — a fold that
    # kept seeking back would never fold anything (wait_handled times out).
    worker.start()
    await worker.wait_ready(timeout_s=180)
    await worker.wait_handled(100, timeout_s=90)
    await wait_converged(pipeline, timeout_s=60)
    await asyncio.sleep(3)  # room for a seek-back loop to show in the log
    check_worker_alive(worker)
    log_text = worker.log_path.read_text(errors="replace")
    seek_backs = [line for line in log_text.splitlines() if "were not folded; consuming again" in line]
    not_in_topic = [line for line in log_text.splitlines() if "are not in the topic" in line]
    assert len(seek_backs) == 1 and f"partition 0 of {topic}: events from offset 100 " in seek_backs[0], (
        f"expected one seek back to offset 100, got {len(seek_backs)}: {seek_backs[:3]}; log {worker.log_path}")
    assert len(not_in_topic) == 1 and "ERROR" in not_in_topic[0] and (
        f"partition 0 of {topic}: offsets 100 to 199 are not in the topic" in not_in_topic[0]
    ) and "folding on from 200" in not_in_topic[0], f"{not_in_topic}; log {worker.log_path}"

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.get(f"{worker.base_url}/healthz") as resp:
            counts = (await resp.json())["events"]
        async with session.get(f"{worker.base_url}/vsync") as resp:
            offsets = (await resp.json())["offsets"]
        headers = {"Authorization": f"Bearer {pipeline.token}"}
        found = {}
        for entry in (lost[0], lost[-1], after[0], after[-1]):
            async with session.get(f"{worker.base_url}/entries/{quote(entry.key, safe='')}", headers=headers) as resp:
                found[entry.key] = resp.status
    assert (counts["folded"], counts["duplicate"], counts["stale"], counts["deadLettered"]) == (100, 0, 0, 0), counts
    assert offsets == {"0": 299}
    assert found == {lost[0].key: 404, lost[-1].key: 404, after[0].key: 200, after[-1].key: 200}
    check = await ledger_check(pipeline)
    assert check["partitions"] == [0] and check["drifted"] == []
    await verify_all_ok(pipeline)
    # The offsets past the gap are committed too: a restart does not go through the gap again.
    deadline = time.monotonic() + 30
    while (lag := await group_lag(kafka_bootstrap, pipeline.env["VSYNC_APP_ID"], topic)) != {0: 0}:
        assert time.monotonic() < deadline, f"uncommitted records {lag}; log {worker.log_path}"
        await asyncio.sleep(1)
