"""The main job end to end on the real stack: Pulsar → adapter → Kafka → fold → table → Bridge.

Each test runs a real ``vsync-stream worker`` process against real Kafka, Pulsar and PostgreSQL,
with the DICT simulator as a real gRPC server holding the ground truth.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from tests.factories import event_doc
from tests.integration.conftest import Pipeline, PipelineFactory
from tests.integration.helpers import read_dead_letters, served_vsyncs, truth, wait_converged
from vsync_stream.cli import request_verification
from vsync_stream.dead_letters import PAYLOAD_KEPT_BYTES
from vsync_stream.simulator.population import generate_entries, random_update_changes

pytestmark = pytest.mark.integration

P1, P2 = "12345678", "00000208"

BAD_INPUT: list[tuple[str, bytes]] = [
    ("not_json", b"{this is not json"),
    ("not_utf8", b'{"eventId": "\xff\xfe"}'),
    ("missing_field", orjson.dumps(event_doc(entry__requestId=...))),
    ("unknown_action", orjson.dumps(event_doc(action="key.teleported"))),
    ("unknown_key_type", orjson.dumps(event_doc(entry__keyType="IBAN"))),
    ("cpf_check_digits", orjson.dumps(event_doc(entry__keyType="CPF", entry__key="52998224724"))),
    ("key_format", orjson.dumps(event_doc(entry__keyType="CPF", entry__key="+5511987654321"))),
    ("request_id_not_uuid", orjson.dumps(event_doc(entry__requestId="req-1"))),
    ("participant_not_8_digits", orjson.dumps(event_doc(entry__account__participant="1234"))),
    # Unicode digits (issue #14, item 6): an Arabic-Indic CPF digit passes the check digits, a
    # fullwidth one in a phone; both are dead letters with their reason, never folded.
    ("key_not_ascii", orjson.dumps(event_doc(entry__keyType="CPF", entry__key="\u06652998224725"))),
    ("key_not_ascii", orjson.dumps(event_doc(entry__key="+551198765432\uff11"))),
    # over 1 MB as a dead letter if kept whole: Kafka's default record limit would block the adapter
    ("oversize", orjson.dumps(event_doc(reason="x" * 800_000))),
]


def make_history(pipeline: Pipeline, n: int, seed: int) -> list[Any]:
    """Creations of ``n`` entries, then updates and deletes of some, as the DICT confirms them."""
    rng = random.Random(seed)
    entries = list(generate_entries(n, [P1, P2], seed=seed))
    events = [pipeline.model.create(e) for e in entries]
    events += [pipeline.model.update(e.key, **random_update_changes(e, rng)) for e in rng.sample(entries, n // 10)]
    events += [pipeline.model.delete(e.key) for e in rng.sample(entries, n // 15)]
    return events


async def test_main_job_end_to_end(pipeline_factory: PipelineFactory, kafka_bootstrap: str,
                                   postgres_dsn: str) -> None:
    pipeline = await pipeline_factory()
    events = make_history(pipeline, 3000, seed=11)
    await pipeline.publish(events)
    replayed = random.Random(5).sample(events, 100)  # the connector publishes some events twice
    await pipeline.publish(replayed)
    pipeline.publish_raw([(f"bad-{i}", payload) for i, (_code, payload) in enumerate(BAD_INPUT)])

    counts = await pipeline.worker.wait_handled(pipeline.published, timeout_s=300)
    assert counts["folded"] == len(events)
    assert counts["duplicate"] + counts["stale"] == len(replayed)
    assert counts["deadLettered"] == len(BAD_INPUT)
    assert counts["received"] == counts["forwarded"] == pipeline.published  # nothing lost (I3)

    # I1: the served VSync of every (participant, key type) is the DICT's own.
    assert await served_vsyncs(pipeline) == truth(pipeline)

    # Bad input: every message is in the dead-letter topic with its reason and original bytes.
    letters = await read_dead_letters(kafka_bootstrap, pipeline.dead_letter_topic, len(BAD_INPUT))
    assert sorted(doc["reason"] for doc, _ in letters) == sorted(code for code, _ in BAD_INPUT)
    assert sorted(payload for _, payload in letters) == sorted(payload[:PAYLOAD_KEPT_BYTES] for _, payload in BAD_INPUT)
    cut = [doc for doc, _ in letters if doc.get("payloadTruncated")]
    big = BAD_INPUT[-1][1]
    assert [(d["payloadBytes"], d["payloadSha256"]) for d in cut] == [(len(big), hashlib.sha256(big).hexdigest())]
    assert all(doc["detail"] and doc["stage"] == "adapter" for doc, _ in letters)

    # On-demand verification needs a token; with one, every pair is OK.
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{pipeline.worker.base_url}/verify") as resp:
            assert resp.status == 401
        async with session.post(f"{pipeline.worker.base_url}/verify",
                                headers={"Authorization": "Bearer wrong-token"}) as resp:
            assert resp.status == 401
    rows = await request_verification(pipeline.worker.base_url, pipeline.token)
    assert len(rows) == 10 and {r["result"] for r in rows} == {"OK"}
    assert {(r["participant"], r["keyType"]): r["vsync"] for r in rows} == {k: v[0] for k, v in truth(pipeline).items()}
    assert all(r["offsets"] for r in rows)  # I4: the cut's offsets are recorded

    # The simulator saw exactly those VSyncs, and PostgreSQL holds the round.
    conn = await asyncpg.connect(postgres_dsn)
    try:
        stored = await conn.fetch("SELECT participant, key_type, vsync, result FROM verifications WHERE round_id = $1",
                                  uuid.UUID(rows[0]["roundId"]))
    finally:
        await conn.close()
    assert {(r["participant"], r["key_type"]): (r["vsync"], r["result"]) for r in stored} == \
        {(r["participant"], r["keyType"]): (r["vsync"], "OK") for r in rows}

    # A change behind the pipeline's back shows as NOK for exactly that pair.
    target = next(e for e in pipeline.model.entries() if e.participant == P2 and e.key_type == "EMAIL")
    pipeline.model.tamper_update(target.key, account_number="99999")
    rows = await request_verification(pipeline.worker.base_url, pipeline.token)
    assert [(r["participant"], r["keyType"]) for r in rows if r["result"] != "OK"] == [(P2, "EMAIL")]

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{pipeline.worker.base_url}/verifications?limit=20") as resp:
            history = (await resp.json())["verifications"]
        # I1 on demand: the served ledgers equal a recomputation from the entries table.
        async with session.post(f"{pipeline.worker.base_url}/ledger-check") as resp:
            assert resp.status == 401
        async with session.post(f"{pipeline.worker.base_url}/ledger-check",
                                headers={"Authorization": f"Bearer {pipeline.token}"}) as resp:
            check = await resp.json()
    assert len(history) == 20 and {h["result"] for h in history} == {"OK", "NOK"}
    assert check["drifted"] == [] and len(check["partitions"]) == 4


async def test_sigkill_mid_stream_and_restore_from_changelog_keep_the_vsync_exact(
        pipeline_factory: PipelineFactory) -> None:
    pipeline = await pipeline_factory()
    events = make_history(pipeline, 6000, seed=12)
    publishing = asyncio.create_task(pipeline.publish(events))
    await pipeline.worker.wait_ready()
    await pipeline.worker.wait_handled(1500, timeout_s=300)
    pipeline.worker.kill()  # a crash: uncommitted offsets are replayed on restart (at-least-once)
    await publishing
    pipeline.worker.start()
    await wait_converged(pipeline, timeout_s=300)

    # A worker with no local state restores the table from the changelog and serves the same VSyncs.
    pipeline.worker.stop()
    shutil.rmtree(Path(pipeline.env["VSYNC_DATA_DIR"]))
    pipeline.worker.start()
    await pipeline.worker.wait_ready()
    await wait_converged(pipeline, timeout_s=120)
    rows = await request_verification(pipeline.worker.base_url, pipeline.token)
    assert {r["result"] for r in rows} == {"OK"}
