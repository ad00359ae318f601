"""``vsync-stream demo``: the main job end to end on the local stack, with a report.

Starts the DICT simulator with a generated population, publishes the participant's key events to
Pulsar as its connector would, runs a worker (a real ``vsync-stream worker`` process), waits until
every event is folded, verifies every (participant, key type) through the Bridge, then changes one
entry in the simulator behind the pipeline's back and shows NOK for exactly that pair.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import signal
import sys
import time
from pathlib import Path

import click
import pulsar
from tqdm import tqdm

from vsync_stream.bridges.audit_store import AuditStore
from vsync_stream.bridges.pulsar_source import ensure_subscription
from vsync_stream.cli import print_results_table, request_verification
from vsync_stream.settings import Settings
from vsync_stream.simulator.model import DictModel
from vsync_stream.simulator.population import generate_entries, random_update_changes
from vsync_stream.simulator.publisher import EventPublisher
from vsync_stream.simulator.server import DictSimulator
from vsync_stream.worker_process import WorkerFailed, WorkerProcess, free_port, run_env


async def run_demo(participants: list[str], entries: int, updates: int, deletes: int, seed: int, report_path: Path,
                   keep_running: bool, timeout_s: float) -> bool:
    """Run the demo; return True when every row was OK and the divergence showed as NOK."""
    settings = Settings(participants=participants)
    run_id = time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(2)
    token = secrets.token_urlsafe(24)
    rng = random.Random(seed)
    print(f"demo run {run_id}: participants {', '.join(settings.participants)}")

    async with AuditStore(settings.postgres_dsn.get_secret_value(), max_size=1) as audit:
        await audit.migrate()

    model = DictModel()
    simulator = DictSimulator(model)
    bridge_port = await simulator.start("127.0.0.1", 0)
    print(f"DICT simulator (gRPC Bridge) on 127.0.0.1:{bridge_port}")

    events = []
    population = list(tqdm(generate_entries(entries, settings.participants, seed=seed), total=entries,
                           desc="population", unit="entry", file=sys.stdout, mininterval=1.0))
    for entry in population:
        events.append(model.create(entry))
    for entry in rng.sample(population, updates):
        events.append(model.update(entry.key, **random_update_changes(entry, rng)))
    for entry in rng.sample(population, deletes):
        events.append(model.delete(entry.key))

    env = run_env(f"demo-{run_id}", bridge_target=f"127.0.0.1:{bridge_port}", participants=settings.participants,
                  token=token, data_root=Path(".local/demo").resolve(), web_port=free_port())
    ensure_subscription(settings.pulsar_url, env["VSYNC_PULSAR_TOPIC"], env["VSYNC_PULSAR_SUBSCRIPTION"])
    worker = WorkerProcess(env, Path(f".local/logs/demo-worker-{run_id}.log").resolve())
    worker.start()
    base_url = worker.base_url
    print(f"worker pid {worker.proc.pid if worker.proc else '?'}, web view {base_url}, log {worker.log_path}")
    try:
        publisher = EventPublisher(settings.pulsar_url, env["VSYNC_PULSAR_TOPIC"],
                                   batching_type=pulsar.BatchingType.KeyBased)
        with tqdm(total=len(events), desc="publishing", unit="ev", file=sys.stdout, mininterval=1.0) as bar:
            await publisher.start()
            try:
                step = 5000
                for i in range(0, len(events), step):
                    await publisher.publish_many(events[i:i + step])
                    bar.update(len(events[i:i + step]))
                await publisher.flush()
            finally:
                await publisher.stop()
        try:
            counts = await worker.wait_handled(len(events), timeout_s, progress=True)
        except WorkerFailed as exc:
            raise click.ClickException(str(exc)) from None
        print(f"folded: {counts}")

        rows = await request_verification(base_url, token)
        print_results_table(rows)
        all_ok = all(r["result"] == "OK" for r in rows)

        target = rng.choice([e for e in population if model.entry(e.key) is not None])
        model.tamper_update(target.key, account_number=str(rng.randrange(10**9, 10**10)))
        print(f"\nchanged one {target.key_type} entry of participant {target.participant} in the DICT "
              "behind the pipeline's back; verifying again:")
        rows_after = await request_verification(base_url, token)
        print_results_table(rows_after)
        nok = [(r["participant"], r["keyType"]) for r in rows_after if r["result"] != "OK"]
        divergence_ok = nok == [(target.participant, target.key_type)]

        report = {
            "results": [{"participant": r["participant"], "keyType": r["keyType"], "entries": r["entries"],
                         "vsync": r["vsync"], "result": r["result"]} for r in rows],
            "divergence": {"participant": target.participant, "keyType": target.key_type,
                           "result": next(r["result"] for r in rows_after
                                          if (r["participant"], r["keyType"]) == (target.participant, target.key_type))},
            "events": {"published": len(events), **counts},
        }
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nreport written to {report_path}")
        ok = all_ok and divergence_ok
        print("DEMO OK: every pair OK, and the divergence shows as NOK for exactly that pair" if ok
              else f"DEMO FAILED: all_ok={all_ok}, NOK pairs after the change: {nok}")
        if keep_running:
            print(f"keeping the worker and the simulator running (web view {base_url}, token {token}); Ctrl-C stops")
            await _wait_forever()
        return ok
    finally:
        worker.stop()
        await simulator.stop()


async def _wait_forever() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


@click.command("demo")
@click.option("--participants", default="12345678,00000208", show_default=True,
              help="Comma-separated ISPBs of the direct participant and its indirect ones.")
@click.option("--entries", default=100_000, show_default=True, help="Entries in the simulator's population.")
@click.option("--updates", default=10_000, show_default=True, help="Update events after the creations.")
@click.option("--deletes", default=5_000, show_default=True, help="Delete events after the updates.")
@click.option("--seed", default=20261129, show_default=True, help="Seed of the generated population.")
@click.option("--report", "report_path", default="demo-report.json", show_default=True, type=click.Path(path_type=Path))
@click.option("--keep-running", is_flag=True, help="Keep the worker and the simulator up after the demo.")
@click.option("--timeout", "timeout_s", default=900.0, show_default=True, help="Seconds allowed for folding.")
def demo_command(participants: str, entries: int, updates: int, deletes: int, seed: int, report_path: Path, keep_running: bool,
                 timeout_s: float) -> None:
    """Run the main job end to end on the local stack and write demo-report.json."""
    ispbs = [p.strip() for p in participants.split(",") if p.strip()]
    ok = asyncio.run(run_demo(ispbs, entries, updates, deletes, seed, report_path, keep_running, timeout_s))
    sys.exit(0 if ok else 1)
