"""``vsync-stream adapter``: the Pulsar-to-Kafka adapter alone, in its own process(es).

:func:`run_adapter` is the adapter: a :class:`~vsync_stream.bridges.pulsar_source.PulsarSource`
feeding a :class:`~vsync_stream.bridges.kafka_produce.BatchProducer` over its own aiokafka producer
(acks=all, so Pulsar is acknowledged only once Kafka holds each record, invariant I3).

``vsync-stream adapter --concurrency N`` (default ``VSYNC_ADAPTER_CONCURRENCY``) runs N adapter
processes on the one subscription (``KeyShared`` keeps each key on one consumer, so per-key order
holds), supervised by this process (:mod:`vsync_stream.adapter_processes`). A worker started with
``VSYNC_ADAPTER_ENABLED=true`` starts the same N child processes, so the in-worker adapter is the
standalone one and does not share the fold's core; ``VSYNC_ADAPTER_CONCURRENCY=0`` runs it inside
the worker's event loop instead (the mode before issue #15).
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import signal

import click

from vsync_stream.bridges.kafka_produce import BatchProducer
from vsync_stream.bridges.kafka_security import kafka_security
from vsync_stream.bridges.kafka_topics import ensure_topics, product_topics
from vsync_stream.bridges.pulsar_security import pulsar_client_options
from vsync_stream.bridges.pulsar_source import PulsarSource, Tally
from vsync_stream.logging_setup import faust_logging_config
from vsync_stream.names import ENTRIES_TABLE, changelog_topic
from vsync_stream.settings import Settings

log = logging.getLogger(__name__)

RESTART_DELAY_S = 2.0
LINGER_MS = 2


async def run_adapter(settings: Settings, stop: asyncio.Event, tally: Tally | None = None) -> None:
    """Move events from Pulsar to Kafka until ``stop`` is set; reconnect after broker trouble.

    Args:
        settings: the adapter's settings (Kafka, Pulsar, topics, ``adapter_batch_size``).
        stop: set it to stop; what Kafka already holds is still acknowledged on Pulsar.
        tally: counts received/forwarded events, for a parent process (optional).
    """
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
    sink = BatchProducer(producer, s.key_events_topic, s.dead_letter_topic)
    tally = tally if tally is not None else Tally()

    try:
        while not stop.is_set():
            source = PulsarSource(s.pulsar_url, s.pulsar_topic, s.pulsar_subscription, s.pulsar_subscription_type,
                                  s.max_event_bytes, batch_size=s.adapter_batch_size,
                                  client_options=pulsar_client_options(s), tally=tally)
            runner: asyncio.Task[None] | None = None
            try:
                await source.start()
                await sink.start()
                runner = asyncio.create_task(source.run(sink))
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
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Adapter processes on the subscription [VSYNC_ADAPTER_CONCURRENCY, at least 1].")
@click.option("--report-fd", type=int, default=None, hidden=True,
              help="(internal) a child of a supervisor: write counter deltas to this file descriptor.")
@click.option("--parent-pid", type=int, default=None, hidden=True,
              help="(internal) a child of a supervisor: stop when this process is gone.")
def adapter_command(concurrency: int | None, report_fd: int | None, parent_pid: int | None) -> None:
    """Run only the Pulsar-to-Kafka adapter (pair it with workers run with VSYNC_ADAPTER_ENABLED=false)."""
    from vsync_stream.adapter_processes import AdapterProcesses, report_counts, stop_with_parent
    from vsync_stream.cli_support import load_settings

    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    json_config = faust_logging_config(settings.log_format)
    if json_config is not None:  # the worker's JSON lines (a worker's adapter children write to its log)
        logging.config.dictConfig({**json_config, "root": {"handlers": ["default"],
                                                           "level": settings.log_level.upper()}})
    n = concurrency if concurrency is not None else max(settings.adapter_concurrency, 1)
    if parent_pid is not None:
        stop_with_parent(parent_pid)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if n > 1:
            log.info("adapter: %d processes on %s → Kafka %s", n, settings.pulsar_topic, settings.key_events_topic)
            await AdapterProcesses(n).run(stop)
            return
        log.info("adapter: %s → Kafka %s (%s)", settings.pulsar_topic, settings.key_events_topic,
                 settings.kafka_bootstrap)
        tally = Tally()
        reporter = asyncio.create_task(report_counts(report_fd, tally, stop, parent_pid)) \
            if report_fd is not None or parent_pid is not None else None
        try:
            await run_adapter(settings, stop, tally)
        finally:
            if reporter is not None:
                stop.set()
                await reporter

    asyncio.run(main())
