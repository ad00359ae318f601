"""``vsync-stream drill``: BACEN's homologation drill against the local stack.

BACEN's acceptance test changes and inserts 1,000 keys behind the participant's back and expects a
successful verification within one hour. The drill loads a population into the DICT simulator and
the pipeline (``vsync-stream bootstrap`` from the participant's export), verifies (all OK), makes
those changes in the simulator only, then measures the time
from the first NOK to every (participant, key type) OK again — reconciliation starts by itself on
NOK — with the DICT's real rate limits enforced by the simulator.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import click

from vsync_stream.cli_support import print_results_table
from vsync_stream.scenario import LocalScenario
from vsync_stream.simulator.population import PopulationGenerator


async def wait_reconciliations(base_url: str, timeout_s: float) -> list[dict[str, Any]]:
    """Wait until no reconciliation runs on the worker; return the recent ones."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{base_url}/reconciliations") as resp:
                    doc = await resp.json()
            except (TimeoutError, aiohttp.ClientError):  # a busy worker answers late: ask again
                await asyncio.sleep(0.5)
                continue
            if not doc["running"]:
                recent: list[dict[str, Any]] = doc["recent"]
                return recent
            await asyncio.sleep(0.5)
    raise click.ClickException(f"reconciliations still running after {timeout_s:.0f} s")


async def run_drill(participants: list[str], entries: int, changes: int, seed: int, report_path: Path,
                    timeout_s: float) -> bool:
    """Run the drill; return True when every pair is OK again within the hour."""
    rng = random.Random(seed)
    async with LocalScenario("drill", participants) as run:
        population, _changes = await run.go_live(entries, 0, 0, seed, ready_timeout_s=timeout_s)
        rows = await run.verify()
        if any(r["result"] != "OK" for r in rows):
            print_results_table(rows)
            raise click.ClickException("the pipeline was not in sync before the drill")
        print(f"all {len(rows)} pairs OK with {entries} entries; the drill changes and inserts {changes} keys "
              "in the DICT behind the pipeline's back")

        generator = PopulationGenerator(participants, seed=seed + 1)
        changed = inserted = 0
        for entry in rng.sample(population, changes // 2):
            run.model.tamper_update(entry.key, account_number=str(rng.randrange(10**6, 10**12)))
            changed += 1
        while inserted < changes - changed:
            fresh = replace(generator.entry(), request_id=str(uuid.uuid4()))
            if run.model.entry(fresh.key) is None:
                run.model.tamper_create(fresh)
                inserted += 1

        first_nok = time.monotonic()
        rows = await run.verify()
        nok = [(r["participant"], r["keyType"]) for r in rows if r["result"] != "OK"]
        print(f"first verification after the drill: {len(nok)} pairs NOK; reconciling")
        runs = await wait_reconciliations(run.base_url, timeout_s=3600)
        rows = await run.verify()
        elapsed = time.monotonic() - first_nok
        print_results_table(rows)
        ok = all(r["result"] == "OK" for r in rows)
        ours = [r for r in runs if (r["participant"], r["keyType"]) in nok]
        totals = {k: sum(r[k] for r in ours) for k in ("added", "removed", "changed")}
        rejections = sum(run.simulator.rejections.values())
        print(f"\nfrom first NOK to all OK: {elapsed:.1f} s (target < 60 s; BACEN's limit 3600 s)")
        print(f"corrections: added {totals['added']}, removed {totals['removed']}, changed {totals['changed']} "
              f"(the drill changed {changed} and inserted {inserted}); reconciliations: {len(ours)} "
              f"({', '.join(sorted({r['path'] for r in ours}))} path); DICT rate-limit rejections: {rejections}")
        report = {"entries": entries, "changed": changed, "inserted": inserted, "nokPairs": len(nok),
                  "secondsToAllOk": round(elapsed, 3), "corrections": totals, "rateLimitRejections": rejections,
                  "allOk": ok}
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        return ok and totals["changed"] == changed and totals["added"] == inserted and elapsed < 3600


@click.command("drill")
@click.option("--participants", default="12345678,00000208", show_default=True, help="Comma-separated ISPBs.")
@click.option("--entries", default=1_000_000, show_default=True, help="Population of the DICT and of the pipeline.")
@click.option("--changes", default=1000, show_default=True, help="Keys changed and inserted (half each).")
@click.option("--seed", default=7, show_default=True)
@click.option("--report", "report_path", default="drill-report.json", show_default=True,
              type=click.Path(path_type=Path))
@click.option("--timeout", "timeout_s", default=3600.0, show_default=True, help="Seconds allowed for loading.")
def drill_command(participants: str, entries: int, changes: int, seed: int, report_path: Path,
                  timeout_s: float) -> None:
    """Run BACEN's homologation drill on the local stack and print the time to all OK."""
    ispbs = [p.strip() for p in participants.split(",") if p.strip()]
    ok = asyncio.run(run_drill(ispbs, entries, changes, seed, report_path, timeout_s))
    sys.exit(0 if ok else 1)
