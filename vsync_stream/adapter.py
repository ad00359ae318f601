"""``vsync-stream adapter``: the Pulsar-to-Kafka adapter alone, in its own process.

A worker runs the adapter in its own event loop by default (``VSYNC_ADAPTER_ENABLED=true``), so
Pulsar decoding, validation and the CID computation share one core with the fold. A deployment can
instead run this command beside workers started with ``VSYNC_ADAPTER_ENABLED=false``: the same
:class:`~vsync_stream.bridges.pulsar_source.PulsarSource`, with its own aiokafka producer
(acks=all, so Pulsar is acknowledged only once Kafka holds each record, invariant I3). Several
adapters may run on a ``KeyShared`` or ``Shared`` subscription.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import click

from vsync_stream.bridges.kafka_security import kafka_security
from vsync_stream.bridges.kafka_topics import ensure_topics, product_topics
from vsync_stream.bridges.pulsar_security import pulsar_client_options
from vsync_stream.bridges.pulsar_source import PulsarSource
from vsync_stream.dead_letters import dead_letter_record
from vsync_stream.domain.events import KeyChange, encode_change
from vsync_stream.errors import InvalidEvent
from vsync_stream.names import ENTRIES_TABLE, changelog_topic
from vsync_stream.settings import Settings

log = logging.getLogger(__name__)

RESTART_DELAY_S = 2.0
LINGER_MS = 2


async def run_adapter(settings: Settings, stop: asyncio.Event) -> None:
    """Move events from Pulsar to Kafka until ``stop`` is set; reconnect after broker trouble."""
    from aiokafka import AIOKafkaProducer

    security = kafka_security(settings)
    s = settings
    await ensure_topics(s.kafka_bootstrap, product_topics(
        s.key_events_topic, changelog_topic(s.app_id, ENTRIES_TABLE), s.dead_letter_topic, s.partitions,
        s.core_notices_topic), s.replication_factor, security.client_kwargs())
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all", linger_ms=LINGER_MS,
                                max_batch_size=1024 * 1024, client_id=f"{s.app_id}-adapter",
                                **security.client_kwargs())
    await producer.start()

    async def forward(change: KeyChange) -> Any:
        return await producer.send(s.key_events_topic, value=encode_change(change), key=change.key.encode("utf-8"))

    async def dead_letter(payload: bytes, error: InvalidEvent, source: dict[str, Any]) -> Any:
        return await producer.send(s.dead_letter_topic, value=dead_letter_record(payload, error, stage="adapter",
                                                                                 source=source))

    try:
        while not stop.is_set():
            source = PulsarSource(s.pulsar_url, s.pulsar_topic, s.pulsar_subscription, s.pulsar_subscription_type,
                                  s.max_event_bytes, client_options=pulsar_client_options(s))
            runner: asyncio.Task[None] | None = None
            try:
                await source.start()
                runner = asyncio.create_task(source.run(forward, dead_letter))
                stopper = asyncio.create_task(stop.wait())
                done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if runner in done:
                    runner.result()  # raises the adapter's error, if any
            except Exception as exc:  # broker trouble: log, back off, reconnect; nothing unsent was acked
                log.error("pulsar adapter stopped (%s: %s); restarting in %.0f s", type(exc).__name__, exc,
                          RESTART_DELAY_S)
                await asyncio.sleep(RESTART_DELAY_S)
            finally:
                await source.stop()  # unblocks batch_receive's thread at the next receive timeout
                if runner is not None and not runner.done():
                    runner.cancel()
    finally:
        await producer.stop()  # flushes what was sent; unacknowledged Pulsar messages are redelivered


@click.command("adapter")
def adapter_command() -> None:
    """Run only the Pulsar-to-Kafka adapter (pair it with workers run with VSYNC_ADAPTER_ENABLED=false)."""
    from vsync_stream.cli_support import load_settings

    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("adapter: %s → Kafka %s (%s)", settings.pulsar_topic, settings.key_events_topic,
                 settings.kafka_bootstrap)
        await run_adapter(settings, stop)

    asyncio.run(main())
