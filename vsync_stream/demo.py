"""``vsync-stream demo``: the main job end to end on the local stack, with a report.

Starts the DICT simulator with a generated population, loads the participant's export of it with
``vsync-stream bootstrap``, publishes the changes that follow (updates, deletes) to Pulsar as its
connector would, runs a worker (a real ``vsync-stream worker`` process), waits until
every event is folded, verifies every (participant, key type) through the Bridge, then changes one
entry in the simulator behind the pipeline's back and shows NOK for exactly that pair.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
from pathlib import Path

import click

from vsync_stream.cli_support import print_results_table
from vsync_stream.scenario import LocalScenario


async def run_demo(participants: list[str], entries: int, updates: int, deletes: int, seed: int, report_path: Path,
                   keep_running: bool, timeout_s: float, via_rest: bool = True) -> bool:
    """Run the demo; return True when every row was OK and the divergence showed as NOK."""
    rng = random.Random(seed)
    # The demo shows the NOK itself; reconciliation is the subject of `vsync-stream drill`.
    async with LocalScenario("demo", participants, env_extra={"VSYNC_AUTO_RECONCILE": "false"},
                             via_rest=via_rest) as run:
        population, events = await run.go_live(entries, updates, deletes, seed)
        await run.publish(events)
        counts = await run.wait_folded(timeout_s)
        print(f"events: {counts}")

        rows = await run.verify()
        print_results_table(rows)
        all_ok = all(r["result"] == "OK" for r in rows)

        target = rng.choice([e for e in population if run.model.entry(e.key) is not None])
        run.model.tamper_update(target.key, account_number=str(rng.randrange(10**9, 10**10)))
        print(f"\nchanged one {target.key_type} entry of participant {target.participant} in the DICT "
              "behind the pipeline's back; verifying again:")
        rows_after = await run.verify()
        print_results_table(rows_after)
        nok = [(r["participant"], r["keyType"]) for r in rows_after if r["result"] != "OK"]
        divergence_ok = nok == [(target.participant, target.key_type)]

        report = {
            "results": [{"participant": r["participant"], "keyType": r["keyType"], "entries": r["entries"],
                         "vsync": r["vsync"], "result": r["result"]} for r in rows],
            "divergence": {"participant": target.participant, "keyType": target.key_type,
                           "result": next(r["result"] for r in rows_after if r["participant"] == target.participant
                                          and r["keyType"] == target.key_type)},
            "events": {"published": len(events), **counts},
            "bootstrapSeconds": round(run.bootstrap_s, 1),
        }
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nreport written to {report_path}")
        ok = all_ok and divergence_ok
        print("DEMO OK: every pair OK, and the divergence shows as NOK for exactly that pair" if ok
              else f"DEMO FAILED: all_ok={all_ok}, NOK pairs after the change: {nok}")
        if keep_running:
            print(f"keeping the worker and the simulator running (web view {run.base_url}, token {run.token}); "
                  "Ctrl-C stops")
            await _wait_forever()
        return ok


async def _wait_forever() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


@click.command("demo")
@click.option("--participants", default="12345678,00000208", show_default=True,
              help="Comma-separated ISPBs of the direct participant and its indirect ones.")
@click.option("--entries", default=105_000, show_default=True,
              help="Entries created in the simulator (the deletes leave at least 100,000).")
@click.option("--updates", default=10_000, show_default=True, help="Update events after the creations.")
@click.option("--deletes", default=5_000, show_default=True, help="Delete events after the updates.")
@click.option("--seed", default=20261129, show_default=True, help="Seed of the generated population.")
@click.option("--report", "report_path", default="demo-report.json", show_default=True, type=click.Path(path_type=Path))
@click.option("--keep-running", is_flag=True, help="Keep the worker and the simulator up after the demo.")
@click.option("--timeout", "timeout_s", default=900.0, show_default=True, help="Seconds allowed for folding.")
@click.option("--via-rest/--via-grpc", "via_rest", default=True, show_default=True,
              help="The worker's Bridge: `vsync-stream bridge` in front of the simulator's DICT REST API (mutual TLS, "
                   "signed XML), or the simulator's own gRPC face.")
def demo_command(participants: str, entries: int, updates: int, deletes: int, seed: int, report_path: Path,
                 keep_running: bool, timeout_s: float, via_rest: bool) -> None:
    """Run the main job end to end on the local stack and write demo-report.json."""
    ispbs = [p.strip() for p in participants.split(",") if p.strip()]
    ok = asyncio.run(run_demo(ispbs, entries, updates, deletes, seed, report_path, keep_running, timeout_s, via_rest))
    sys.exit(0 if ok else 1)
