"""``vsync-stream simulator``: run the DICT simulator as a standalone gRPC Bridge (and, with
``--rest-port``, as BCB's DICT REST API over mutual TLS too, for ``vsync-stream bridge``)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import click
import pulsar
from tqdm import tqdm

from vsync_stream.simulator.model import DictModel
from vsync_stream.simulator.population import generate_entries
from vsync_stream.simulator.publisher import EventPublisher
from vsync_stream.simulator.rest import RestDictSimulator
from vsync_stream.simulator.rest_pki import make_dict_pki
from vsync_stream.simulator.server import DictSimulator


async def _serve(host: str, port: int, entries: int, participants: list[str], seed: int, publish_to: str | None,
                 pulsar_url: str, rest_port: int | None = None, pki_dir: Path = Path(".local/dict-pki")) -> None:
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
    rest: RestDictSimulator | None = None
    if rest_port is not None:
        pki = make_dict_pki(pki_dir)
        rest = RestDictSimulator(model, pki)
        await rest.start(host, rest_port)
        click.echo(f"DICT simulator serving the DICT REST API on {rest.url} (mutual TLS; certificates in {pki_dir}); "
                   "a `vsync-stream bridge` in front of it needs:")
        for name, value in {"VSYNC_DICT_API_URL": rest.url, **pki.bridge_env(),
                            "VSYNC_DICT_API_PARTICIPANT": participants[0]}.items():
            click.echo(f"  export {name}={value}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        if rest is not None:
            await rest.stop()
        await simulator.stop()


@click.command("simulator")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=15051, show_default=True, help="gRPC port (VSYNC_BRIDGE_TARGET of the workers).")
@click.option("--entries", default=10_000, show_default=True, help="Generated population size.")
@click.option("--participants", default="12345678", show_default=True, help="Comma-separated ISPBs.")
@click.option("--seed", default=1, show_default=True)
@click.option("--publish-to", default=None, help="Pulsar topic to publish the population's creation events to.")
@click.option("--pulsar-url", envvar="VSYNC_PULSAR_URL", default="pulsar://127.0.0.1:16650", show_default=True)
@click.option("--rest-port", type=int, default=None,
              help="Also serve BCB's DICT REST API (mutual TLS, signed XML) on this port, over the same model.")
@click.option("--pki-dir", type=click.Path(path_type=Path), default=Path(".local/dict-pki"), show_default=True,
              help="Where the REST face writes its throwaway CAs and certificates (for `vsync-stream bridge`).")
def simulator_command(host: str, port: int, entries: int, participants: str, seed: int, publish_to: str | None,
                      pulsar_url: str, rest_port: int | None, pki_dir: Path) -> None:
    """Run the DICT simulator (a real gRPC Bridge server, and optionally the DICT REST API) with a population."""
    ispbs = [p.strip() for p in participants.split(",") if p.strip()]
    asyncio.run(_serve(host, port, entries, ispbs, seed, publish_to, pulsar_url, rest_port, pki_dir))
