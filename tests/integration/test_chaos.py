"""Exact under faults: replays, duplicates, reordering, crashes and broker restarts never change a VSync.

A realistic stream (creates, updates, deletes, claims, re-creations from the DICT simulator's model)
is published to Pulsar in bursts with 5 % duplicate publications, 2 % out-of-order deliveries and
malformed messages, a few bad records are written straight to the Kafka key-events topic, and the
worker is SIGKILLed several times (once more while it restarts) while Kafka (and Pulsar, in the
full run) are restarted with ``deploy/local/stack restart``. The worker checks its VSync ledgers
against its table every 2 s meanwhile (invariant I1 under load).

Worker counters reset on every kill, so the accounting rests on durable facts only:

* (a) Pulsar: the subscription's backlog is 0 (the adapter acks only after Kafka acked);
* (b) Kafka key-events, read end to end: every distinct event id published is there and nothing
  else; replaying that log through the domain fold accounts for every record (applied, duplicate,
  stale, dead-lettered);
* (c) the dead-letter topic holds exactly the bad messages injected, each at its stage (a
  redelivery may store one twice);
* (d) the entries changelog, read end to end: every key holds its newest event's state;
* (e) the served VSync of every (participant, key type) equals the simulator's, POST /verify
  answers OK for all of them, and no ledger drift was ever reported.

The reduced run is part of ``make test``; the full one (marker ``chaos_full``, deselected by default)
is ``make chaos``.
``VSYNC_CHAOS_SEED`` picks another stream and other fault moments.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
from collections import Counter
from dataclasses import dataclass

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.chaos_driver import ChaosPublisher, FaultLog, inject_kafka_garbage, plan_faults, run_faults
from tests.integration.chaos_reconcile import FULL_RECONCILE, REDUCED_RECONCILE, run_reconcile_chaos
from tests.integration.chaos_stream import (
    FULL,
    REDUCED,
    ChaosProfile,
    ChaosStream,
    build_stream,
    kafka_garbage,
    make_model,
)
from tests.integration.conftest import Pipeline, PipelineFactory
from tests.integration.helpers import (
    VSyncs,
    check_worker_alive,
    differing_pairs,
    format_pairs,
    group_lag,
    read_dead_letters,
    read_topic,
    served_vsyncs,
    truth,
    wait_converged,
)
from vsync_stream.cli import request_verification
from vsync_stream.dead_letters import decode_dead_letter
from vsync_stream.domain.events import DEFAULT_MAX_EVENT_BYTES, change_of, decode_change, encode_change
from vsync_stream.domain.fold import EntryState, FoldStatus, fold
from vsync_stream.errors import InvalidEvent
from vsync_stream.names import changelog_topic
from vsync_stream.simulator.population import generate_entries
from vsync_stream.tables.entries import OFFSET_KEY

pytestmark = pytest.mark.integration

SEED = os.environ.get("VSYNC_CHAOS_SEED")
LEDGER_CHECK_INTERVAL_S = "2"


def seeded(profile: ChaosProfile) -> ChaosProfile:
    return dataclasses.replace(profile, seed=int(SEED)) if SEED else profile


# ------------------------------------------------------------------------------------------------
# durable facts
# ------------------------------------------------------------------------------------------------

async def pulsar_backlog(admin_url: str, topic: str, subscription: str) -> int | None:
    """Messages of ``subscription`` not yet acknowledged (Pulsar admin REST), or None if unknown."""
    path = topic.removeprefix("persistent://")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        try:
            async with session.get(f"{admin_url}/admin/v2/persistent/{path}/stats") as resp:
                if resp.status != 200:
                    return None
                stats = await resp.json()
        except (aiohttp.ClientError, TimeoutError):
            return None
    sub = stats.get("subscriptions", {}).get(subscription)
    return None if sub is None else int(sub.get("msgBacklog", 0))


async def wait_drained(pipeline: Pipeline, kafka_bootstrap: str, timeout_s: float) -> tuple[int | None, int]:
    """Wait until Pulsar's backlog (where its admin API is available: not on pulsar-lite) and the
    consumer group's lag on key-events are both 0.

    Returns:
        (Pulsar backlog or None when unknown, Kafka lag).
    """
    admin_url = os.environ.get("VSYNC_PULSAR_ADMIN_URL")
    deadline = time.monotonic() + timeout_s
    backlog: int | None = None
    lag: dict[int, int] = {}
    while time.monotonic() < deadline:
        check_worker_alive(pipeline.worker)
        if admin_url:
            backlog = await pulsar_backlog(admin_url, pipeline.pulsar_topic, pipeline.env["VSYNC_PULSAR_SUBSCRIPTION"])
        lag = await group_lag(kafka_bootstrap, pipeline.env["VSYNC_APP_ID"], pipeline.env["VSYNC_KEY_EVENTS_TOPIC"])
        if (not admin_url or backlog == 0) and not any(lag.values()):
            return backlog, 0
        await asyncio.sleep(1.0)
    raise AssertionError(f"not drained in {timeout_s:.0f} s: Pulsar backlog {backlog}, Kafka group lag {lag}; "
                         f"worker log {pipeline.worker.log_path}")


def replay_fold(records: list[tuple[int, int, bytes | None, bytes | None]],
                ) -> tuple[dict[str, EntryState], Counter[str]]:
    """Fold a Kafka key-events log ``(partition, offset, key, value)`` through the pure domain fold,
    partition by partition, rejecting what the fold agent rejects (``dead-lettered``)."""
    state: dict[str, EntryState] = {}
    counts: Counter[str] = Counter()
    for _partition, _offset, key, value in sorted(records, key=lambda r: (r[0], r[1])):
        try:
            change = decode_change(value, DEFAULT_MAX_EVENT_BYTES)
            if key != change.key.encode("utf-8"):
                raise InvalidEvent("key_mismatch", "Kafka record key missing or not the event's Pix key")
        except InvalidEvent:
            counts["dead-lettered"] += 1
            continue
        outcome = fold(state.get(change.key), change)
        counts[outcome.status.value] += 1
        if outcome.status is not FoldStatus.STALE and outcome.state is not None:
            state[change.key] = outcome.state
    return state, counts


@dataclass
class Facts:
    """What the run left in the brokers and what the worker serves, read after it converged."""

    backlog: int | None
    lag: int
    kafka_records: int
    kafka_ids: Counter[str]
    replay_counts: Counter[str]
    replay_wrong: int
    dead_by_stage: dict[str, Counter[bytes]]
    dead_reasons: Counter[str]
    changelog_records: int
    table_keys: int
    wrong_rows: dict[str, tuple[tuple[str, str | None] | None, tuple[str, str | None]]]
    extra_rows: list[str]
    served: VSyncs | None
    expected: VSyncs
    results: dict[tuple[str, str], str]
    drift_lines: list[str]


async def collect_facts(pipeline: Pipeline, kafka_bootstrap: str, stream: ChaosStream,
                        garbage: list[tuple[bytes | None, bytes | None]], backlog: int | None, lag: int) -> Facts:
    env = pipeline.env
    garbage_values = {value for _key, value in garbage}

    # (b) key-events end to end, and the same log through the domain fold.
    key_records = await read_topic(kafka_bootstrap, env["VSYNC_KEY_EVENTS_TOPIC"], timeout_s=600)
    kafka_ids = Counter(decode_change(r.value).event_id for r in key_records
                        if r.value is not None and r.value not in garbage_values)
    replayed, replay_counts = replay_fold([(r.partition, r.offset, r.key, r.value) for r in key_records])

    # (c) dead letters by stage.
    dead = [decode_dead_letter(r.value) for r in await read_topic(kafka_bootstrap, pipeline.dead_letter_topic)
            if r.value is not None]
    dead_by_stage: dict[str, Counter[bytes]] = {"adapter": Counter(), "fold": Counter()}
    for doc, payload in dead:
        dead_by_stage.setdefault(doc["stage"], Counter())[payload] += 1

    # (d) the entries changelog end to end: the newest state of every key.
    # Committed records only, as restores and standbys read them (the writers are transactional: a
    # killed worker's open transaction is aborted by its successor, and its records stay in the log).
    changelog = await read_topic(kafka_bootstrap, changelog_topic(env["VSYNC_APP_ID"]), timeout_s=600,
                                 isolation_level="read_committed")
    table: dict[str, EntryState] = {}
    markers: dict[int, int] = {}
    for record in sorted(changelog, key=lambda r: (r.partition, r.offset)):
        assert record.key is not None and record.value is not None
        if record.key == OFFSET_KEY:
            markers[record.partition] = int(record.value)
            continue
        table[record.key.decode("utf-8")] = EntryState.decode(record.value)
    # every partition's changelog ends saying it folded its key events up to the last one
    last_folded: dict[int, int] = {}
    for r in key_records:
        last_folded[r.partition] = max(r.offset, last_folded.get(r.partition, -1))
    assert markers == last_folded, f"changelog source offsets {markers}, key-events ends {last_folded}"
    expected_rows = {key: (event.event_id, entry.cid if (entry := pipeline.model.entry(key)) is not None else None)
                     for key, event in stream.last_event_per_key().items()}
    wrong_rows = {k: ((table[k].event_id, table[k].cid) if k in table else None, want)
                  for k, want in expected_rows.items() if k not in table or (table[k].event_id, table[k].cid) != want}
    replay_wrong = sum(1 for k, want in expected_rows.items()
                       if k not in replayed or (replayed[k].event_id, replayed[k].cid) != want)

    # (e) served VSyncs, the DICT's verdict, and the worker's own ledger checks.
    served = await served_vsyncs(pipeline)
    rows = await request_verification(pipeline.worker.base_url, pipeline.token)
    drift_lines = [ln for ln in pipeline.worker.log_path.read_text(errors="replace").splitlines()
                   if "VSync ledger differed" in ln]
    return Facts(backlog, lag, len(key_records), kafka_ids, replay_counts, replay_wrong, dead_by_stage,
                 Counter(doc["reason"] for doc, _ in dead), len(changelog), len(table), wrong_rows,
                 sorted(set(table) - set(expected_rows)), served, truth(pipeline),
                 {(r["participant"], r["keyType"]): r["result"] for r in rows}, drift_lines)


def report(profile: ChaosProfile, stream: ChaosStream, publisher: ChaosPublisher, faults: FaultLog, garbage: int,
           facts: Facts, timings: dict[str, float], log_path: object) -> None:
    """Print the figures of the run (pytest -s shows them)."""
    published_ids = stream.distinct_ids
    adapter_dead, fold_dead = facts.dead_by_stage["adapter"], facts.dead_by_stage["fold"]
    valid_publications = sum(1 for m in stream.messages if m.event_id is not None)
    lines = [
        f"\n==== chaos run '{profile.name}' (seed {profile.seed}, {profile.partitions} partitions, "
        f"{len(profile.participants)} participants) ====",
        f"wall time {timings['wall']:.1f} s (stream generated in {timings['generated']:.1f} s, published by "
        f"{timings['published']:.1f} s, converged and drained by {timings['converged']:.1f} s)",
        f"published to Pulsar: {len(stream.messages) + publisher.republished:,} messages = {len(stream.events):,} "
        f"distinct events + {stream.duplicates:,} duplicates + {len(stream.malformed)} malformed "
        f"+ {publisher.republished} republished after a failed send; {garbage} bad records written to Kafka",
        f"  operations: {dict(stream.operations)}",
        f"  reordered (an event swapped with the next event of its key): {stream.reordered:,}",
        f"faults: {faults.kills} SIGKILLs of the worker, {faults.kafka_restarts} Kafka restart(s), "
        f"{faults.pulsar_restarts} Pulsar restart(s)",
        *(f"  {line}" for line in faults.timeline),
        f"(a) Pulsar backlog at the end: {facts.backlog if facts.backlog is not None else 'n/a (no admin API)'}; "
        f"Kafka consumer-group lag: {facts.lag}",
        f"(b) Kafka key-events: {facts.kafka_records:,} records = {len(facts.kafka_ids):,} distinct events "
        f"(missing {len(published_ids - set(facts.kafka_ids))}, unknown {len(set(facts.kafka_ids) - published_ids)}) "
        f"+ {sum(facts.kafka_ids.values()) - len(facts.kafka_ids):,} copies (duplicates, redeliveries) + {garbage} bad",
        "    that log through the domain fold: " + " + ".join(
            f"{k} {facts.replay_counts[k]:,}" for k in ("applied", "duplicate", "stale", "dead-lettered"))
        + f" = {sum(facts.replay_counts.values()):,} records",
        f"(c) dead-letter topic: adapter {sum(adapter_dead.values())} records / {len(adapter_dead)} distinct "
        f"(injected {len(stream.malformed)}), fold {sum(fold_dead.values())} / {len(fold_dead)} (injected {garbage}); "
        f"reasons {dict(sorted(facts.dead_reasons.items()))}",
        f"(d) entries changelog: {facts.changelog_records:,} records, {facts.table_keys:,} keys; rows not holding "
        f"their newest event: {len(facts.wrong_rows)}; unknown keys: {len(facts.extra_rows)}",
        f"accounting: {len(published_ids) + len(stream.malformed):,} distinct messages published = "
        f"{len(published_ids & set(facts.kafka_ids)):,} reached the fold (folded or stale, lag 0) + "
        f"{len(set(adapter_dead) & set(stream.malformed))} dead-lettered by the adapter; "
        f"{valid_publications:,} valid publications -> {sum(facts.kafka_ids.values()):,} Kafka records (at least once)",
        format_pairs(facts.served, facts.expected, facts.results),
        f"verification: {sum(1 for r in facts.results.values() if r == 'OK')}/{len(facts.results)} OK; "
        f"ledger drift reports in the worker log: {len(facts.drift_lines)}; worker log {log_path}",
    ]
    print("\n".join(lines))


async def run_chaos(pipeline_factory: PipelineFactory, kafka_bootstrap: str, profile: ChaosProfile) -> None:
    t0 = time.monotonic()
    model, clock = make_model()
    stream = build_stream(model, clock, profile)
    garbage = kafka_garbage(profile.kafka_garbage, profile.seed + 8)
    timings = {"generated": time.monotonic() - t0}
    pipeline = await pipeline_factory(participants=list(profile.participants), partitions=profile.partitions,
                                      start=False, model=model,
                                      env_extra={"VSYNC_LEDGER_CHECK_INTERVAL_S": LEDGER_CHECK_INTERVAL_S})
    worker, env = pipeline.worker, pipeline.env
    publisher = ChaosPublisher(env["VSYNC_PULSAR_URL"], pipeline.pulsar_topic, stream.messages, profile.publish_rate,
                               profile.seed + 7)

    async def describe() -> str:  # where the worker is when a fault hits
        try:
            lag = await group_lag(kafka_bootstrap, env["VSYNC_APP_ID"], env["VSYNC_KEY_EVENTS_TOPIC"])
        except Exception as exc:  # Kafka itself may be down
            return f"fold lag unknown ({type(exc).__name__})"
        return f"fold lag {sum(lag.values())}"

    worker.start()
    publisher.start()
    tasks: list[asyncio.Task[object]] = []
    try:
        await worker.wait_ready(timeout_s=180)
        tasks = [asyncio.create_task(run_faults(plan_faults(profile, len(stream.messages)), publisher, worker,
                                                random.Random(profile.seed + 6), describe)),
                 asyncio.create_task(inject_kafka_garbage(kafka_bootstrap, env["VSYNC_KEY_EVENTS_TOPIC"], garbage,
                                                          publisher, profile.seed + 9))]
        fault_log = (await asyncio.gather(*tasks))[0]
        assert isinstance(fault_log, FaultLog)
        await publisher.wait(timeout_s=len(stream.messages) / profile.publish_rate + 600)
    finally:  # on failure too: no publisher thread, producer or fault left running into the next test
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        publisher.stop()
    timings["published"] = time.monotonic() - t0

    # The worker must get there on its own now: the DICT's VSyncs, everything consumed.
    await wait_converged(pipeline, timeout_s=300 if profile.events <= REDUCED.events else 1200)
    backlog, lag = await wait_drained(pipeline, kafka_bootstrap, timeout_s=180)
    timings["converged"] = time.monotonic() - t0
    facts = await collect_facts(pipeline, kafka_bootstrap, stream, garbage, backlog, lag)
    timings["wall"] = time.monotonic() - t0
    report(profile, stream, publisher, fault_log, len(garbage), facts, timings, worker.log_path)

    where = f"worker log {worker.log_path}"
    published_ids = stream.distinct_ids
    missing, unknown = published_ids - set(facts.kafka_ids), set(facts.kafka_ids) - published_ids
    assert (fault_log.kills, fault_log.kafka_restarts, fault_log.pulsar_restarts) == (
        profile.kills + 2 * profile.kills_during_restart, profile.kafka_restarts, profile.pulsar_restarts)
    assert not missing, f"{len(missing)} published events never reached Kafka, e.g. {sorted(missing)[:5]}; {where}"
    assert not unknown, f"{len(unknown)} event ids in Kafka were never published, e.g. {sorted(unknown)[:5]}"
    assert sum(facts.kafka_ids.values()) >= sum(1 for m in stream.messages if m.event_id is not None), \
        "fewer Kafka records than valid publications: something was lost between Pulsar and Kafka"
    assert set(facts.dead_by_stage["adapter"]) == set(stream.malformed), (
        f"adapter dead letters differ from the malformed messages published: "
        f"missing {len(set(stream.malformed) - set(facts.dead_by_stage['adapter']))}, "
        f"unexpected {len(set(facts.dead_by_stage['adapter']) - set(stream.malformed))}; {where}")
    assert set(facts.dead_by_stage["fold"]) == {value or b"" for _key, value in garbage}, (  # a null value: b""
        f"fold dead letters differ from the bad records written to Kafka; {where}")
    assert set(facts.dead_by_stage) == {"adapter", "fold"}
    assert facts.replay_wrong == 0, f"{facts.replay_wrong} keys: the Kafka log folded once differs from the DICT"
    assert not facts.wrong_rows, (f"{len(facts.wrong_rows)} changelog rows do not hold their newest event "
                                  f"(row, expected), e.g. {dict(list(facts.wrong_rows.items())[:5])}; {where}")
    assert not facts.extra_rows, f"changelog has keys never published: {facts.extra_rows[:5]}"
    assert facts.served == facts.expected, (
        f"served VSyncs differ for {sorted(differing_pairs(facts.served, facts.expected))}; {where}")
    assert set(facts.results.values()) == {"OK"}, (
        f"the simulator answered NOK for {sorted(p for p, r in facts.results.items() if r != 'OK')}; {where}")
    assert not facts.drift_lines, f"the worker found its ledgers drifted: {facts.drift_lines[:3]}; {where}"


async def test_reduced_chaos_run_keeps_every_vsync_exact(pipeline_factory: PipelineFactory,
                                                         kafka_bootstrap: str) -> None:
    await run_chaos(pipeline_factory, kafka_bootstrap, seeded(REDUCED))


@pytest.mark.timeout(5400)
@pytest.mark.chaos_full
async def test_full_chaos_run_keeps_every_vsync_exact(pipeline_factory: PipelineFactory,
                                                      kafka_bootstrap: str) -> None:
    await run_chaos(pipeline_factory, kafka_bootstrap, seeded(FULL))


def test_stream_is_a_function_of_the_seed() -> None:
    """The publication order, event ids and injected faults of content repeat exactly for a seed."""
    tiny = ChaosProfile("tiny", events=3000, kills=0, kafka_restarts=0, pulsar_restarts=0, malformed=6,
                        publish_rate=1.0)
    first, second = build_stream(*make_model(), tiny), build_stream(*make_model(), tiny)
    assert first.messages == second.messages
    assert first.reordered == round(0.02 * 3000) and first.duplicates == round(0.05 * 3000)
    assert len(first.messages) == 3000 + first.duplicates + 6
    assert kafka_garbage(6, 1) == kafka_garbage(6, 1)
    # Out of order for real: that many events are published after a newer event of their key.
    newest: dict[str, int] = {}
    late = 0
    for message in first.messages:
        if message.kind == "event":
            version = orjson.loads(message.payload)["version"]
            late += version < newest.get(message.key, 0)
            newest[message.key] = max(version, newest.get(message.key, 0))
    assert late == first.reordered


async def test_ledger_checks_never_see_a_half_folded_batch(pipeline_factory: PipelineFactory,
                                                           kafka_bootstrap: str) -> None:
    """Bad records among good ones in key-events, with the worker checking its ledgers every 5 ms.

    The fold used to await each dead letter in the middle of a batch, after moving the ledgers and
    before writing the rows: a ledger check (or a snapshot, or a rebalance) landing there saw the
    ledgers ahead of the table, "repaired" them from the table, and the rest of the batch then left
    them behind it until the next check (an hour, by default).
    """
    pipeline = await pipeline_factory(partitions=4, env_extra={"VSYNC_LEDGER_CHECK_INTERVAL_S": "0.005"})
    await pipeline.worker.wait_ready(timeout_s=180)
    garbage = kafka_garbage(300, seed=3)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    await producer.start()
    try:
        for i, entry in enumerate(generate_entries(3000, ["12345678", "00000208"], seed=5)):
            event = pipeline.model.create(entry)
            await producer.send(pipeline.env["VSYNC_KEY_EVENTS_TOPIC"], encode_change(change_of(event)),
                                key=entry.key.encode("utf-8"))
            if i % 10 == 0:
                key, value = garbage[i // 10]
                await producer.send(pipeline.env["VSYNC_KEY_EVENTS_TOPIC"], value, key=key)
            if i % 500 == 499:
                await producer.flush()
                await asyncio.sleep(0.3)  # pacing: several batches, each with its dead letters
        await producer.flush()
    finally:
        await producer.stop()
    await wait_converged(pipeline, timeout_s=120)
    drift = [ln for ln in pipeline.worker.log_path.read_text(errors="replace").splitlines()
             if "VSync ledger differed" in ln]
    assert not drift, f"{len(drift)} ledger checks found the ledgers apart from the table, e.g. {drift[:2]}"
    dead = await read_dead_letters(kafka_bootstrap, pipeline.dead_letter_topic, len(garbage))
    assert sorted(payload for _, payload in dead) == sorted(value or b"" for _, value in garbage)  # null: b""


# -- chaos case: live traffic during a full-path reconciliation (tests/integration/chaos_reconcile.py) --
async def test_reduced_live_traffic_during_a_full_reconciliation(pipeline_factory: PipelineFactory) -> None:
    await run_reconcile_chaos(pipeline_factory, REDUCED_RECONCILE)


@pytest.mark.timeout(3600)
@pytest.mark.chaos_full
async def test_full_live_traffic_during_a_full_reconciliation(pipeline_factory: PipelineFactory) -> None:
    await run_reconcile_chaos(pipeline_factory, FULL_RECONCILE)
