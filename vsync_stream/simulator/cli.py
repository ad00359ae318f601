"""``vsync-stream simulator``: run the DICT simulator as a standalone gRPC Bridge."""

from __future__ import annotations

import asyncio
import signal
import sys

import click
import pulsar
from tqdm import tqdm

from vsync_stream.simulator.model import DictModel
from vsync_stream.simulator.population import generate_entries
from vsync_stream.simulator.publisher import EventPublisher
from vsync_stream.simulator.server import DictSimulator


async def _serve(host: str, port: int, entries: int, participants: list[str], seed: int, publish_to: str | None,
                 pulsar_url: str) -> None:
    model = DictModel()
    events = [model.create(entry) for entry in tqdm(generate_entries(entries, participants, seed=seed),
                                                     total=entries, desc="population", unit="entry", file=sys.stderr)]
    if publish_to:
        publisher = EventPublisher(pulsar_url, publish_to, batching_type=pulsar.BatchingType.KeyBased)
        await publisher.start()
        try:
            await publisher.publish_many(tqdm(events, desc="publishing", unit="ev", file=sys.stderr))
            await publisher.flush()
        finally:
            await publisher.stop()
    simulator = DictSimulator(model)
    bound = await simulator.start(host, port)
    click.echo(f"DICT simulator serving the Bridge API on {host}:{bound} ({entries} entries); Ctrl-C stops")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await simulator.stop()


@click.command("simulator")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=15051, show_default=True, help="gRPC port (VSYNC_BRIDGE_TARGET of the workers).")
@click.option("--entries", default=10_000, show_default=True, help="Generated population size.")
@click.option("--participants", default="12345678", show_default=True, help="Comma-separated ISPBs.")
@click.option("--seed", default=1, show_default=True)
@click.option("--publish-to", default=None, help="Pulsar topic to publish the population's creation events to.")
@click.option("--pulsar-url", envvar="VSYNC_PULSAR_URL", default="pulsar://127.0.0.1:16650", show_default=True)
def simulator_command(host: str, port: int, entries: int, participants: str, seed: int, publish_to: str | None,
                      pulsar_url: str) -> None:
    """Run the DICT simulator (a real gRPC Bridge server) with a generated population."""
    ispbs = [p.strip() for p in participants.split(",") if p.strip()]
    asyncio.run(_serve(host, port, entries, ispbs, seed, publish_to, pulsar_url))
