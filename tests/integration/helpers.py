"""Helpers shared by the integration tests: served vs. true VSyncs, and reading Kafka topics end to end."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.conftest import Pipeline
from vsync_stream.dead_letters import decode_dead_letter
from vsync_stream.domain.keys import KEY_TYPES
from vsync_stream.worker_process import WorkerProcess

KEY_TYPE_NAMES: tuple[str, ...] = tuple(kt.value for kt in KEY_TYPES)

# (participant, key type) -> (VSync as 64 hex chars, number of active entries)
VSyncs = dict[tuple[str, str], tuple[str, int]]


def participants_of(pipeline: Pipeline) -> list[str]:
    """The ISPBs the pipeline's worker verifies (its ``VSYNC_PARTICIPANTS``)."""
    return pipeline.env["VSYNC_PARTICIPANTS"].split(",")


async def served_vsyncs(pipeline: Pipeline) -> VSyncs | None:
    """What the worker serves on ``GET /vsync``, or None while it does not answer 200."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        try:
            async with session.get(f"{pipeline.worker.base_url}/vsync") as resp:
                if resp.status != 200:
                    return None
                rows = (await resp.json())["vsync"]
        except (aiohttp.ClientError, TimeoutError):
            return None
    return {(r["participant"], r["keyType"]): (r["vsync"], r["entries"]) for r in rows}


def truth(pipeline: Pipeline) -> VSyncs:
    """The simulator's (the DICT's) VSync and entry count of every pair the worker verifies."""
    return {(p, t): (pipeline.model.vsync(p, t), pipeline.model.count(p, t))
            for p in participants_of(pipeline) for t in KEY_TYPE_NAMES}


def differing_pairs(served: VSyncs | None, expected: VSyncs) -> dict[tuple[str, str], tuple[Any, Any]]:
    """Pairs whose served value differs from the expected one: pair -> (served, expected)."""
    served = served or {}
    return {k: (served.get(k), v) for k, v in expected.items() if served.get(k) != v}


async def wait_converged(pipeline: Pipeline, timeout_s: float) -> None:
    """Wait until the worker serves exactly the simulator's VSyncs and counts.

    Raises:
        AssertionError: not converged by the deadline; names the differing pairs and the worker log.
    """
    deadline = time.monotonic() + timeout_s
    served = None
    while time.monotonic() < deadline:
        served = await served_vsyncs(pipeline)
        if served == truth(pipeline):
            return
        await asyncio.sleep(1)
    diff = differing_pairs(served, truth(pipeline))
    raise AssertionError(f"worker did not converge in {timeout_s} s; differing pairs (served, simulator): "
                         f"{dict(sorted(diff.items()))}; log {pipeline.worker.log_path}")


async def read_dead_letters(bootstrap: str, topic: str, expected: int) -> list[tuple[dict[str, Any], bytes]]:
    """Read the dead-letter topic from the start until ``expected`` records arrived (30 s at most)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"test-{uuid.uuid4().hex}", enable_auto_commit=False)
    await consumer.start()
    try:
        found: list[tuple[dict[str, Any], bytes]] = []
        deadline = time.monotonic() + 30
        while len(found) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                found += [decode_dead_letter(r.value) for r in records]
        return found
    finally:
        await consumer.stop()


@dataclass(frozen=True, slots=True)
class TopicRecord:
    """One record of a Kafka topic as read back by a test."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


async def topic_partitions(bootstrap: str, topic: str) -> list[int]:
    """The partition numbers of ``topic`` (empty when it does not exist)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if not described or described[0].get("error_code", 0) != 0:
        return []
    return sorted(p["partition"] for p in described[0]["partitions"])


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> log end offset (the offset the next record will get) of ``topic``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
        ends = await consumer.end_offsets(tps) if tps else {}
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


async def read_topic(bootstrap: str, topic: str, timeout_s: float = 120.0,
                     isolation_level: str = "read_uncommitted") -> list[TopicRecord]:
    """Read every record of every partition of ``topic``, from its start to the end offsets of now.

    Compacted-away records are simply absent (offsets then have gaps). With ``isolation_level=
    "read_committed"`` records of aborted transactions are skipped and the end is the last stable
    offset.

    Raises:
        TimeoutError: the end was not reached within ``timeout_s``.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=4 * 1024 * 1024,
                                isolation_level=isolation_level)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic)]
        if not tps:
            return []
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        for tp in list(pending):  # a partition whose records were all compacted/deleted away
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
        records: list[TopicRecord] = []
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: partitions {sorted(tp.partition for tp in pending)} "
                                   f"not read to their end offsets within {timeout_s:.0f} s")
            batch = await consumer.getmany(*pending, timeout_ms=1000, max_records=20_000)
            for tp, rows in batch.items():
                records += [TopicRecord(r.partition, r.offset, r.key, r.value) for r in rows if r.offset < ends[tp]]
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        return records
    finally:
        await consumer.stop()


async def group_lag(bootstrap: str, group_id: str, topic: str) -> dict[int, int]:
    """Partition -> records of ``topic`` not yet committed by consumer group ``group_id``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group_id)
    finally:
        await admin.close()
    ends = await end_offsets(bootstrap, topic)
    done = {tp.partition: meta.offset for tp, meta in committed.items() if tp.topic == topic}
    return {p: end - max(done.get(p, 0), 0) for p, end in ends.items()}


def format_pairs(served: VSyncs | None, expected: VSyncs, results: dict[tuple[str, str], str] | None = None,
                 pairs: Sequence[tuple[str, str]] | None = None) -> str:
    """A text table comparing served and true VSyncs per (participant, key type)."""
    served = served or {}
    results = results or {}
    lines = [f"{'participant':<11} {'keyType':<6} {'entries':>8} {'served':>8}  {'vsync (simulator)':<18} "
             f"{'vsync (served)':<18} {'match':<5} verify"]
    for pair in pairs or sorted(expected):
        want = expected[pair]
        got = served.get(pair)
        lines.append(f"{pair[0]:<11} {pair[1]:<6} {want[1]:>8} {got[1] if got else '-':>8}  {want[0][:16] + '…':<18} "
                     f"{(got[0][:16] + '…') if got else '-':<18} {'yes' if got == want else 'NO':<5} "
                     f"{results.get(pair, '-')}")
    return "\n".join(lines)


class WorkerDied(AssertionError):
    """The worker exited without being killed by the test."""


def check_worker_alive(worker: WorkerProcess) -> None:
    """Raise :class:`WorkerDied` (with the log path and its tail) if the worker exited on its own."""
    if worker.proc is None or worker.proc.poll() is None:
        return
    tail = "\n".join(worker.log_path.read_text(errors="replace").splitlines()[-40:])
    raise WorkerDied(f"the worker exited on its own (code {worker.proc.returncode}); log {worker.log_path}; "
                     f"last lines:\n{tail}")


async def wait_answering(worker: WorkerProcess, timeout_s: float) -> None:
    """Wait until a (re)started worker's web view answers /healthz, ready or not.

    Raises:
        AssertionError: it died or did not answer in time.
    """
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while await worker.health(session) is None:
            check_worker_alive(worker)
            if time.monotonic() > deadline:
                raise AssertionError(f"no /healthz answer in {timeout_s:.0f} s; log {worker.log_path}")
            await asyncio.sleep(0.1)


P1, P2 = "12345678", "00000208"  # the participants of ``pipeline_factory``'s default pipeline


def diverge(pipeline: Pipeline) -> dict[str, tuple[str, str]]:
    """Change the DICT behind the pipeline's back: one divergence of each kind, in distinct pairs."""
    model = pipeline.model
    entries = model.entries()
    by_pair = {(e.participant, e.key_type): e for e in entries}
    missing = replace(by_pair[(P1, "CPF")], key="52998224725", request_id=str(uuid.uuid4()))
    model.tamper_create(missing)                                       # only at the DICT → add
    extra = by_pair[(P1, "PHONE")]
    model.tamper_delete(extra.key)                                     # only local → remove
    changed = by_pair[(P2, "EMAIL")]
    model.tamper_update(changed.key, account_number="424242")         # both, different CID → replace
    evp = by_pair[(P2, "EVP")]
    model.tamper_delete(evp.key)                                       # local-only EVP → removed
    return {"add": (P1, "CPF"), "remove": (P1, "PHONE"), "replace": (P2, "EMAIL"), "evp": (P2, "EVP")}
