"""Chaos case: live traffic during a full-path reconciliation of every pair (issue #14).

The DICT's real rate limits are enforced. Divergences of every kind are made behind the pipeline's
back (entries only at the DICT, only local, with a different CID) in every (participant, key
type), then every pair is reconciled through its CID file while the connector keeps publishing
creates, updates, deletes, duplicates and malformed messages. At the end:

* every run corrected exactly the divergences (nothing the live traffic changed) and verified OK;
* published + corrections = folded + duplicate + stale (superseded corrections included) +
  dead-lettered, from the worker's own counters (no restart in this case, so they are whole);
* the served VSync of every pair is the DICT's, a verification round answers OK for all of them;
* the DICT rejected no request of the client (it paced itself).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import aiohttp

from tests.integration.conftest import PipelineFactory
from tests.integration.helpers import KEY_TYPE_NAMES, served_vsyncs, truth, wait_converged
from tests.integration.live_traffic import LiveTraffic, wait_phase
from tests.integration.test_pipeline import make_history
from vsync_stream.cli import request_verification, run_reconciliation
from vsync_stream.simulator.population import generate_entries

P1, P2 = "12345678", "00000208"


@dataclass(frozen=True, slots=True)
class ReconcileChaosProfile:
    """Size of the case: entries before it, divergences of each kind, live traffic (events/s)."""

    name: str
    entries: int
    divergences: int  # of each kind (add, remove, replace), spread over the pairs
    rate: float
    malformed: int
    seed: int = 14


REDUCED_RECONCILE = ReconcileChaosProfile("reduced", entries=2_000, divergences=30, rate=80, malformed=5)
FULL_RECONCILE = ReconcileChaosProfile("full", entries=20_000, divergences=300, rate=300, malformed=20)


async def metric(base_url: str, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def run_reconcile_chaos(pipeline_factory: PipelineFactory, profile: ReconcileChaosProfile) -> None:
    t0 = time.monotonic()
    pipeline = await pipeline_factory(dict_limits=True, env_extra={"VSYNC_AUTO_RECONCILE": "false"})
    pipeline.simulator.cid_files.delay_s = 4.0  # the window between the file's time and the local read
    model, rng = pipeline.model, random.Random(profile.seed)
    history = make_history(pipeline, profile.entries, seed=profile.seed)
    await pipeline.publish(history)
    await pipeline.worker.wait_handled(len(history), timeout_s=600)

    # Divergences behind the pipeline's back, of each kind, in every pair.
    live = model.entries()
    sample = rng.sample(live, 2 * profile.divergences)
    removed, replaced = sample[:profile.divergences], sample[profile.divergences:]
    for entry in removed:
        model.tamper_delete(entry.key)
    for entry in replaced:  # a new account number: a new CID
        model.tamper_update(entry.key, account_number=str(rng.randrange(10**11, 10**12)))
    added = []
    for entry in generate_entries(10 * profile.divergences, [P1, P2], seed=profile.seed + 500):
        if model.entry(entry.key) is None and entry.key_type != "EVP" and len(added) < profile.divergences:
            model.tamper_create(entry)
            added.append(entry)
    frozen = {e.key for e in [*removed, *replaced, *added]}

    traffic = LiveTraffic(pipeline, frozen, rate=profile.rate, seed=profile.seed + 1, duplicate_rate=0.05)
    stop = asyncio.Event()
    flowing = asyncio.ensure_future(traffic.run(stop))
    pairs = [(p, t) for p in (P1, P2) for t in KEY_TYPE_NAMES]
    try:
        await asyncio.sleep(1.0)
        pipeline.publish_raw([(f"bad-{i}", b"{not json " + str(i).encode()) for i in range(profile.malformed)])
        pending = [asyncio.ensure_future(run_reconciliation(pipeline.worker.base_url, pipeline.token, p, t,
                                                            progress=False, timeout_s=900)) for p, t in pairs]
        await wait_phase(pipeline, len(pending), "fetching the DICT's entries by CID", timeout_s=600)
    finally:
        stop.set()
        await flowing
    runs = await asyncio.gather(*pending)
    reconciled = time.monotonic() - t0

    corrections = sum(r["added"] + r["removed"] + r["changed"] for r in runs)
    counts = await pipeline.worker.wait_handled(pipeline.published + corrections, timeout_s=300)
    await wait_converged(pipeline, timeout_s=300)
    served, expected = await served_vsyncs(pipeline), truth(pipeline)
    rows = await request_verification(pipeline.worker.base_url, pipeline.token)
    superseded = await metric(pipeline.worker.base_url, "vsync_corrections_superseded_total")
    rejections = dict(pipeline.simulator.rejections)
    by_kind = {k: sum(r.get(k, 0) for r in runs) for k in ("added", "removed", "changed", "deferred", "superseded")}
    handled = counts["folded"] + counts["duplicate"] + counts["stale"] + counts["deadLettered"]
    print("\n".join([
        f"\n==== chaos case 'live traffic during a full reconciliation' ({profile.name}, seed {profile.seed}) ====",
        f"wall time {time.monotonic() - t0:.1f} s (reconciliations finished at {reconciled:.1f} s)",
        f"divergences made at the DICT: {len(added)} only there, {len(removed)} only local, {len(replaced)} with "
        f"another CID, over {len(pairs)} pairs",
        f"live traffic during the runs: {traffic.sent} events + {traffic.duplicates} duplicates + "
        f"{profile.malformed} malformed, at ~{profile.rate:g}/s",
        f"runs: {sorted({r['result'] for r in runs})}, paths {sorted({r['path'] for r in runs})}, attempts "
        f"{sum(r['attempts'] for r in runs)}; corrections {by_kind}",
        f"published {pipeline.published:,} + corrections {corrections} = {pipeline.published + corrections:,}; "
        f"folded {counts['folded']:,} + duplicate {counts['duplicate']:,} + stale {counts['stale']:,} "
        f"(superseded corrections {superseded:g}) + dead-lettered {counts['deadLettered']} = {handled:,}",
        f"served VSyncs exact: {served == expected}; verification "
        f"{sum(1 for r in rows if r['result'] == 'OK')}/{len(rows)} OK; DICT rate-limit rejections {rejections}",
    ]))

    assert {r["result"] for r in runs} == {"OK"}, [(r["keyType"], r["result"], r["error"]) for r in runs]
    assert {r["path"] for r in runs} == {"full"}
    assert (by_kind["added"], by_kind["removed"], by_kind["changed"]) == (len(added), len(removed), len(replaced))
    assert traffic.sent > 0 and by_kind["deferred"] > 0  # the window had traffic, and it was left alone
    assert handled == pipeline.published + corrections, counts
    assert counts["deadLettered"] == profile.malformed
    assert served == expected
    assert {r["result"] for r in rows} == {"OK"}
    assert sum(rejections.values()) == 0, rejections

