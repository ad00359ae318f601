"""Scale-out on real Kafka: 1 → 3 → 2 workers and a SIGKILL while events stream in.

Every answer a worker gives during the run is checked after it, against the key-events topic:
a ``GET /vsync`` answer must equal the fold of every partition's records up to the offsets it
reports (invariant I4), a ``GET /entries/{key}`` answer must be a state the key went through; any
other answer must be 503. At the end every worker serves the simulator's VSyncs and the
simulator answers OK to a verification requested from a non-coordinator worker; then the DICT is
changed behind the pipeline's back and reconciliations requested of either worker repair it.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from tests.integration.conftest import Pipeline, PipelineFactory
from tests.integration.helpers import diverge, read_topic, truth
from vsync_stream.cli import request_verification, run_reconciliation
from vsync_stream.domain.events import decode_change
from vsync_stream.domain.fold import EntryState, fold
from vsync_stream.domain.vsync import VSyncLedger, vsync_hex
from vsync_stream.simulator.population import generate_entries, random_update_changes
from vsync_stream.worker_process import WorkerProcess, free_port

pytestmark = pytest.mark.integration

PARTITIONS = 6
P1, P2 = "12345678", "00000208"


@dataclass
class Observed:
    """What the pollers saw: /vsync answers (worker, status, document), /entries answers."""

    vsync: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    entries: list[tuple[str, str, int, dict[str, Any]]] = field(default_factory=list)
    partitions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def add_worker(pipeline: Pipeline, name: str, tmp: Any) -> WorkerProcess:
    env = dict(pipeline.env)
    env.update({"VSYNC_WEB_PORT": str(free_port()), "VSYNC_DATA_DIR": f"{pipeline.env['VSYNC_DATA_DIR']}-{name}",
                "VSYNC_GROUP_INSTANCE_ID": f"{pipeline.run_id}-{name}"})
    worker = WorkerProcess(env, tmp / f"{pipeline.run_id}-{name}.log")
    pipeline.extra_workers.append(worker)
    worker.start()
    return worker


async def poll(workers: list[WorkerProcess], keys: list[str], token: str, cluster_token: str, seen: Observed,
               stop: asyncio.Event) -> None:
    """Query every live worker's /vsync, /entries/{key} and /internal/partitions until ``stop``."""
    rng = random.Random(3)
    headers = {"Authorization": f"Bearer {token}"}
    cluster = {"Authorization": f"Bearer {cluster_token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        while not stop.is_set():
            for worker in list(workers):
                if worker.proc is None or worker.proc.poll() is not None:
                    continue
                try:
                    async with session.get(f"{worker.base_url}/vsync") as resp:
                        seen.vsync.append((worker.base_url, resp.status, await resp.json(content_type=None)))
                    key = rng.choice(keys)
                    async with session.get(f"{worker.base_url}/entries/{quote(key, safe='')}", headers=headers) as resp:
                        seen.entries.append((worker.base_url, key, resp.status, await resp.json(content_type=None)))
                    async with session.get(f"{worker.base_url}/internal/partitions", headers=cluster) as resp:
                        if resp.status == 200:
                            seen.partitions.append((worker.base_url, await resp.json()))
                except (aiohttp.ClientError, TimeoutError):
                    pass  # a worker stopping or starting: no answer is not a wrong answer
            await asyncio.sleep(0.3)


async def wait_serving(worker: WorkerProcess, workers: int, timeout_s: float) -> dict[str, Any]:
    """Wait until ``worker`` answers /vsync combining exactly ``workers`` workers."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{worker.base_url}/vsync") as resp:
                    last = (resp.status, await resp.json(content_type=None))
                    if resp.status == 200 and len(last[1]["workers"]) == workers:
                        return dict(last[1])
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = exc
            await asyncio.sleep(1)
    raise AssertionError(f"{worker.base_url} did not serve a {workers}-worker VSync in {timeout_s} s: {last}")


def check_answers(pipeline: Pipeline, records: list[Any], seen: Observed) -> tuple[int, int]:
    """Check every observed answer against the key-events topic; return (vsync, entries) answers checked."""
    by_partition: dict[int, list[tuple[int, Any]]] = defaultdict(list)
    history: dict[str, list[EntryState]] = defaultdict(list)
    state: dict[str, EntryState] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        change = decode_change(record.value, 1 << 20)
        by_partition[record.partition].append((record.offset, change))
    for partition in sorted(by_partition):
        for _offset, change in by_partition[partition]:
            outcome = fold(state.get(change.key), change)
            if outcome.state is not None and outcome.state != state.get(change.key):
                state[change.key] = outcome.state
                history[change.key].append(outcome.state)

    def ledger_at(offsets: dict[str, int | None]) -> VSyncLedger:
        rows: dict[str, EntryState] = {}
        for partition, changes in by_partition.items():
            if str(partition) not in offsets:
                continue
            upto = offsets[str(partition)]
            assert upto is not None
            for offset, change in changes:
                if offset > upto:
                    break
                outcome = fold(rows.get(change.key), change)
                if outcome.state is not None:
                    rows[change.key] = outcome.state
        ledger = VSyncLedger()
        for row in rows.values():
            if row.cid is not None:
                ledger.add(row.participant, row.key_type, row.cid)
        return ledger

    for url, report in seen.partitions:
        for partition, part in report["partitions"].items():
            if part["offset"] is None:
                continue
            expected = ledger_at({partition: part["offset"]})
            served = VSyncLedger.from_json(part["pairs"])
            if served != expected:
                matching = [o for o, _c in by_partition[int(partition)] if ledger_at({partition: o}) == served]
                raise AssertionError(f"{url} partition {partition} at offset {part['offset']}: served "
                                     f"{sorted(served.to_json().items())} ≠ topic "
                                     f"{sorted(expected.to_json().items())}; the served ledger matches the topic "
                                     f"at offsets {matching}")
    vsync_checked = 0
    for url, status, doc in seen.vsync:
        assert status in (200, 503), f"{url} answered {status} to /vsync: {doc}"
        if status == 503:
            assert doc.get("error"), doc
            continue
        assert sorted(doc["offsets"]) == [str(p) for p in range(PARTITIONS)], doc["offsets"]
        if any(v is None for v in doc["offsets"].values()):
            continue  # a partition restored on a new owner before it folded anything: offset unknown
        expected = ledger_at(doc["offsets"])
        for row in doc["vsync"]:
            want = (vsync_hex(expected.vsync(row["participant"], row["keyType"])),
                    expected.count(row["participant"], row["keyType"]))
            assert (row["vsync"], row["entries"]) == want, (
                f"{url} served {row['participant']}/{row['keyType']} = {row['vsync'][:12]}…/{row['entries']} at "
                f"offsets {doc['offsets']}, the topic says {want[0][:12]}…/{want[1]}")
        vsync_checked += 1
    entries_checked = 0
    for url, key, status, doc in seen.entries:
        assert status in (200, 404, 503), f"{url} answered {status} to /entries: {doc}"
        if status == 200:
            states = {(s.cid, s.version) for s in history[key]}
            assert (doc["cid"], doc["version"]) in states, f"{url} served a state {key!r} never had"
            assert doc["key"] != key or doc["keyType"] == "EVP", "a personal Pix key was served unmasked"
            entries_checked += 1
        elif status == 404:
            assert key in history, f"{url} answered 404 for a key that was never created"
    return vsync_checked, entries_checked


async def diagnose(pipeline: Pipeline, bootstrap: str, workers: list[WorkerProcess], cluster_token: str) -> str:
    """Which partition of which worker differs from the key-events topic, and what a ledger check says."""
    records = await read_topic(bootstrap, pipeline.env["VSYNC_KEY_EVENTS_TOPIC"])
    rows: dict[int, dict[str, EntryState]] = defaultdict(dict)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        change = decode_change(record.value, 1 << 20)
        outcome = fold(rows[record.partition].get(change.key), change)
        if outcome.state is not None:
            rows[record.partition][change.key] = outcome.state
    found = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for worker in workers:
            async with session.get(f"{worker.base_url}/internal/partitions",
                                   headers={"Authorization": f"Bearer {cluster_token}"}) as resp:
                report = await resp.json()
            async with session.post(f"{worker.base_url}/ledger-check",
                                    headers={"Authorization": f"Bearer {pipeline.token}"}) as resp:
                check = await resp.json()
            for partition, part in report["partitions"].items():
                expected = VSyncLedger()
                for row in rows[int(partition)].values():
                    if row.cid is not None:
                        expected.add(row.participant, row.key_type, row.cid)
                served = VSyncLedger.from_json(part["pairs"])
                if served != expected:
                    found.append(f"{worker.base_url} partition {partition} (offset {part['offset']}): served "
                                 f"{sorted((k, v[0]) for k, v in served.to_json().items())}, topic "
                                 f"{sorted((k, v[0]) for k, v in expected.to_json().items())}; ledger check {check}")
    return "; ".join(found) or "every partition matches the topic now"


async def test_scale_one_three_two_with_a_crash(pipeline_factory: PipelineFactory, kafka_bootstrap: str,
                                                tmp_path: Any) -> None:
    cluster_token = secrets.token_urlsafe(24)
    pipeline = await pipeline_factory(participants=[P1, P2], partitions=PARTITIONS, env_extra={
        "VSYNC_STANDBY_REPLICAS": "1", "VSYNC_CLUSTER_TOKEN": cluster_token,
        "VSYNC_GROUP_INSTANCE_ID": "w1"})
    rng = random.Random(41)
    entries = list(generate_entries(3000, [P1, P2], seed=41))
    events = [pipeline.model.create(e) for e in entries]
    events += [pipeline.model.update(e.key, **random_update_changes(e, rng)) for e in rng.sample(entries, 600)]
    events += [pipeline.model.delete(e.key) for e in rng.sample(entries, 300)]
    keys = [e.key for e in rng.sample(entries, 40)]
    w1 = pipeline.worker
    await w1.wait_ready(180)

    stop = asyncio.Event()
    seen = Observed()
    workers = [w1]
    poller = asyncio.ensure_future(poll(workers, keys, pipeline.token, cluster_token, seen, stop))

    async def stream() -> None:
        for i in range(0, len(events), 60):
            await pipeline.publish(events[i:i + 60])
            await asyncio.sleep(0.5)

    publisher = asyncio.ensure_future(stream())
    try:
        await wait_serving(w1, 1, 120)
        w2, w3 = add_worker(pipeline, "w2", tmp_path), add_worker(pipeline, "w3", tmp_path)
        workers += [w2, w3]
        await wait_serving(w1, 3, 240)  # 1 → 3
        w3.stop()
        workers.remove(w3)
        await wait_serving(w1, 2, 240)  # 3 → 2
        w2.kill()  # SIGKILL: no goodbye; its partitions move once the session times out
        await asyncio.sleep(2)
        w2.start()  # the pod comes back with its data directory and group instance id
        await publisher
        deadline = time.monotonic() + 240
        doc: dict[str, Any] = {}
        while time.monotonic() < deadline:
            doc = await wait_serving(w1, 2, 240)
            served = {(r["participant"], r["keyType"]): (r["vsync"], r["entries"]) for r in doc["vsync"]}
            if served == truth(pipeline):
                break
            await asyncio.sleep(1)
        else:
            raise AssertionError(f"the 2 workers did not converge to the simulator's VSyncs: "
                                 f"{await diagnose(pipeline, kafka_bootstrap, [w1, w2], cluster_token)}")
    finally:
        stop.set()
        await poller
        publisher.cancel()

    # a verification asked of either worker runs on the coordinator and is OK
    for worker in (w1, w2):
        rows = await request_verification(worker.base_url, pipeline.token)
        assert {r["result"] for r in rows} == {"OK"}, rows
    # a routed request that already went round MAX_HOPS times is refused with 503, not forwarded again
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        for worker in (w1, w2):
            for key in keys:
                async with session.get(f"{worker.base_url}/entries/{quote(key, safe='')}", headers={
                        "Authorization": f"Bearer {cluster_token}", "X-Vsync-Scopes": "entries",
                        "X-Vsync-Hops": "2"}) as resp:
                    doc = await resp.json()
                    if doc.get("servedBy") == worker.base_url or resp.status == 404:
                        continue  # this worker owns the key's partition: nothing to forward
                    assert resp.status == 503 and resp.headers["Retry-After"], (resp.status, doc)
                    break
            else:
                raise AssertionError(f"every sampled key is owned by {worker.base_url}")
    # hostile requests get clean 4xx answers, never a 500 or another endpoint's answer
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        auth = {"Authorization": f"Bearer {pipeline.token}"}
        for worker in (w1, w2):
            async with session.post(f"{worker.base_url}/reconcile", headers=auth, data=b"[" * 60_000) as resp:
                assert resp.status == 400, await resp.text()
            for raw_path in ("/entries/..", "/entries/%2E%2E", "/entries/%00"):
                async with session.get(URL(worker.base_url + raw_path, encoded=True), headers=auth) as resp:
                    assert resp.status in (400, 404), (raw_path, resp.status, await resp.text())
            async with session.get(f"{worker.base_url}/entries", params={"key": keys[0]}, headers=auth) as resp:
                assert resp.status == 200 and (await resp.json())["keyType"], await resp.text()
    # the DICT changes behind the pipeline's back; reconciliations asked of either worker run on the
    # coordinator, look rows up on every partition's owner, and end OK
    kinds = diverge(pipeline)
    for i, (participant, key_type) in enumerate(sorted(set(kinds.values()))):
        worker = (w1, w2)[i % 2]
        run = await run_reconciliation(worker.base_url, pipeline.token, participant, key_type, progress=False,
                                       timeout_s=180)
        assert run["result"] == "OK", (worker.base_url, run)
    served = {(r["participant"], r["keyType"]): (r["vsync"], r["entries"])
              for r in (await wait_serving(w2, 2, 60))["vsync"]}
    assert served == truth(pipeline)
    records = await read_topic(kafka_bootstrap, pipeline.env["VSYNC_KEY_EVENTS_TOPIC"])
    vsync_checked, entries_checked = check_answers(pipeline, records, seen)
    assert vsync_checked >= 10 and entries_checked >= 10, (vsync_checked, entries_checked, len(seen.vsync))
