"""The composition root: builds the Faust app, its topics, table, agents, web view and clients.

Nothing connects at import time. :func:`create_app` is the one place that reads settings into
objects; the CLI (``vsync_stream.cli``) calls it and hands the Faust app to the Faust CLI.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from datetime import timedelta
from typing import Any

import faust
import orjson

from vsync_stream.agents.fold import register_fold
from vsync_stream.agents.verify import register_verify_timer
from vsync_stream.auth import Authorizer
from vsync_stream.bridges import kafka_batches
from vsync_stream.bridges.audit_store import AuditStore, VerificationRecord
from vsync_stream.bridges.dict_bridge import BridgeClient
from vsync_stream.bridges.kafka_security import kafka_security
from vsync_stream.bridges.kafka_topics import ensure_topics, product_topics
from vsync_stream.bridges.pacing import parse_rate_limits
from vsync_stream.bridges.pulsar_security import pulsar_client_options
from vsync_stream.bridges.tls import bridge_tls_kwargs, cluster_client_ssl_context, web_server_ssl_context
from vsync_stream.cluster import Cluster
from vsync_stream.domain.events import KeyChange, encode_change
from vsync_stream.errors import StateNotReady
from vsync_stream.logging_setup import faust_logging_config
from vsync_stream.names import ENTRIES_TABLE, changelog_topic
from vsync_stream.reconciliation import Reconciler
from vsync_stream.settings import Settings
from vsync_stream.tables.entries import EntriesTable
from vsync_stream.tables.fence import ChangelogWriters
from vsync_stream.tables.restore import BulkTableManager
from vsync_stream.verification import Verifier
from vsync_stream.web import register_views

log = logging.getLogger(__name__)


# Kafka client settings of the worker's Faust app (also used by the benchmark's baseline, so that
# only the fold differs). The fold takes each partition's fetched records at once (agents/fold.py):
# up to 5,000 records per fetch, at most 1 MB per partition (fetched bytes wait in memory until
# handed over: 8 MB per partition held ~60 MB more at 1 M entries, BENCHMARKS.md); the producer
# waits for every replica and sends large batches.
CLIENT_TUNING: dict[str, Any] = {
    "consumer_auto_offset_reset": "earliest",
    "producer_acks": -1,
    "producer_linger": 0.005,
    "broker_max_poll_records": 5000,
    "stream_buffer_maxsize": 20000,
    "consumer_max_fetch_size": 1024 * 1024,
    "producer_max_batch_size": 1024 * 1024,
}


def rocksdb_options(settings: Settings) -> dict[str, Any]:
    """RocksDB options of the entries table, one database per partition (active or standby).

    Faust's defaults (3 write buffers of 64 MB and a 2 GB block cache per database) let every row
    of a large table stay in memory; here the buffers and the cache are sized by the settings, so a
    worker's memory is bounded by partitions x (2 write buffers + block cache) plus the process.
    """
    return {
        "driver": "rocksdict",
        "write_buffer_size": settings.rocksdb_write_buffer_mb * 1024 * 1024,
        "max_write_buffer_number": 2,
        "block_cache_size": settings.rocksdb_block_cache_mb * 1024 * 1024,
    }


class _FaustApp(faust.App):  # type: ignore[misc]
    """Faust app that runs ``before_consuming`` hooks before its consumer subscribes."""

    before_consuming: list[Any]

    async def on_first_start(self) -> None:
        await super().on_first_start()
        for hook in self.before_consuming:
            await hook()


class VsyncApp:
    """Everything one worker runs, wired from one :class:`Settings`.

    Attributes:
        faust: the Faust app (``vsync-stream worker`` runs it).
        key_events: Kafka topic of validated key events, keyed by Pix key.
        dead_letters: Kafka topic of rejected events.
        entries: the entries table with its per-partition VSync ledgers.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.auth = Authorizer.from_settings(settings)
        # Transport security of every client, checked now: a bad setting stops the worker at start.
        self.kafka_security = kafka_security(settings)
        self.pulsar_options = pulsar_client_options(settings)
        self.bridge_tls = bridge_tls_kwargs(settings)
        web_tls = web_server_ssl_context(settings)  # HTTPS of the web view, worker-to-worker calls included
        self.faust = _FaustApp(
            settings.app_id,
            broker=settings.kafka_broker_url,
            broker_credentials=self.kafka_security.faust_credentials(),
            store="rocksdb://",  # faust's RocksDB store, driven by rocksdict (table option below)
            TableManager=BulkTableManager,  # changelog restore in write batches (tables/restore.py)
            datadir=str(settings.data_dir),
            autodiscover=False,
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            table_standby_replicas=settings.standby_replicas,
            # Fast, still valid on real Kafka (minimum session timeout 6 s): see INFRA.md.
            broker_session_timeout=6.0,
            broker_heartbeat_interval=1.0,
            broker_rebalance_timeout=10.0,
            **CLIENT_TUNING,
            web_host=settings.web_host,
            web_bind=settings.web_host,
            web_port=settings.web_port,
            canonical_url=settings.web_advertised_url
            or f"{'https' if web_tls else 'http'}://{settings.web_host}:{settings.web_port}",
            web_ssl_context=web_tls,
            consumer_group_instance_id=settings.group_instance_id,
            web_in_thread=False,
            timezone=None,
            logging_config=faust_logging_config(settings.log_format),
        )
        self.key_events = self.faust.topic(
            settings.key_events_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
            value_serializer="raw", partitions=settings.partitions, internal=True)
        self.core_notices = self.faust.topic(
            settings.core_notices_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
            value_serializer="raw", partitions=1, internal=True)
        self.dead_letters = self.faust.topic(
            settings.dead_letter_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
            value_serializer="raw", partitions=1, internal=True, retention=timedelta(days=3650))
        self.entries = EntriesTable(
            self.faust, name=ENTRIES_TABLE, default=None, partitions=settings.partitions, key_type=bytes,
            value_type=bytes, options=rocksdb_options(settings), beacon=self.faust.tables.beacon)
        self.faust.tables.add(self.entries)
        if settings.changelog_fencing:  # one transactional writer per active changelog partition (tables/fence.py)
            self.entries.writers = ChangelogWriters(
                changelog_topic(self.faust.conf.id, ENTRIES_TABLE), settings.kafka_bootstrap,
                self.kafka_security.client_kwargs(), max_batch_size=CLIENT_TUNING["producer_max_batch_size"])
            self.entries.source_topic = settings.key_events_topic
        token = settings.cluster_token.get_secret_value() if settings.cluster_token is not None else None
        self.cluster = Cluster(self.faust, self.entries, settings.partitions, token, settings.cluster_timeout_s,
                               settings.cluster_urls, cluster_client_ssl_context(settings))
        self.faust.before_consuming = [self._ensure_topics]
        self._bridge: BridgeClient | None = None
        self._audit: AuditStore | None = None
        self._verifier: Verifier | None = None
        self._reconciler: Reconciler | None = None

        kafka_batches.install(self.faust)  # the fold takes each partition's fetched records at once
        register_fold(self.faust, self.key_events, self.dead_letters, self.entries, settings.max_event_bytes)
        register_verify_timer(self)
        register_views(self)
        self.faust.task(self._start_clients)
        if settings.adapter_enabled:
            self.faust.task(self._run_adapter)

    async def _ensure_topics(self) -> None:
        s = self.settings
        specs = product_topics(s.key_events_topic, changelog_topic(self.faust.conf.id, ENTRIES_TABLE),
                               s.dead_letter_topic, s.partitions, s.core_notices_topic)
        await ensure_topics(s.kafka_bootstrap, specs, s.replication_factor, self.kafka_security.client_kwargs())

    # -- clients, started with the worker ------------------------------------------------------
    async def _start_clients(self) -> None:
        audit = AuditStore(self.settings.postgres_dsn.get_secret_value(), self.settings.app_id)
        await audit.start()
        await audit.migrate()
        bridge = BridgeClient(self.settings.bridge_target, deadline_s=self.settings.bridge_deadline_s,
                              **self.bridge_tls,
                              rate_limits=parse_rate_limits(self.settings.bridge_rate_limits))
        await bridge.start()
        if self.settings.persist_dict_budgets:  # budgets survive restarts and coordinator moves
            await bridge.pacer.share(audit.sync_budgets)
        self._audit, self._bridge = audit, bridge
        self._reconciler = Reconciler(
            self.cluster, bridge, verify_pair=self._verify_pair, last_ok=audit.last_ok,
            send_event=self._send_correction, send_notice=self._send_notice, record=audit.record_reconciliation,
            workdir=self.settings.reconcile_workdir, cid_file_poll_s=self.settings.cid_file_poll_s)
        on_not_ok = self._start_reconciliation if self.settings.auto_reconcile else None
        self._verifier = Verifier(self.cluster.snapshot, bridge, audit, self.settings.participants,
                                  self.settings.key_types, on_not_ok)
        log.info("clients ready: audit store migrated, Bridge at %s", self.settings.bridge_target)

    def audit(self) -> AuditStore:
        """The audit store (started with the worker)."""
        if self._audit is None:
            raise StateNotReady("the audit store is still starting")
        return self._audit

    def reconciler(self) -> Reconciler:
        """The reconciler (ready once the Bridge client and the audit store started)."""
        if self._reconciler is None:
            raise StateNotReady("the Bridge client and the audit store are still starting")
        return self._reconciler

    def _start_reconciliation(self, record: VerificationRecord) -> None:
        if record.trigger != "reconciliation":
            self.reconciler().start(record.participant, record.key_type, trigger=f"nok:{record.round_id}")

    async def _verify_pair(self, participant: str, key_type: str) -> str:
        records = await self.verifier().run("reconciliation", [(participant, key_type)])
        return records[0].result

    async def _send_correction(self, change: KeyChange) -> None:
        fut = await self.key_events.send(key=change.key.encode("utf-8"), value=encode_change(change))
        await fut

    async def _send_notice(self, notice: dict[str, Any]) -> None:
        fut = await self.core_notices.send(key=str(notice["key"]).encode("utf-8"), value=orjson.dumps(notice))
        await fut

    def verifier(self) -> Verifier:
        """The verifier (ready once the Bridge client and the audit store started)."""
        if self._verifier is None:
            raise StateNotReady("the Bridge client and the audit store are still starting")
        return self._verifier

    # -- the Pulsar-to-stream adapter ----------------------------------------------------------
    async def _run_adapter(self) -> None:
        """Run the adapter for the life of the worker: ``VSYNC_ADAPTER_CONCURRENCY`` child processes
        (the standalone ``vsync-stream adapter``, off the fold's core), or with 0 in this event loop.
        Either restarts after an infrastructure error; nothing unsent was acknowledged on Pulsar."""
        from vsync_stream.adapter import run_adapter
        from vsync_stream.adapter_processes import AdapterProcesses

        never = asyncio.Event()  # the task is cancelled when the worker stops
        if self.settings.adapter_concurrency == 0:
            await run_adapter(self.settings, never)
        else:
            await AdapterProcesses(self.settings.adapter_concurrency).run(never)


M_ARENA_MAX = -8  # glibc <malloc.h>


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas of this process (``mallopt(M_ARENA_MAX, arenas)``).

    Each thread that allocates may otherwise get an arena of its own (up to 8 per core), whose
    freed memory is not returned to the others: with the consumer thread and RocksDB's threads this
    held about 35 MB of a worker's RSS at 1 M entries (BENCHMARKS.md, memory). Applies to arenas
    created afterwards, so it is called before the worker starts any thread.

    Returns:
        True when the limit was set; False when ``arenas`` is 0 or the C library is not glibc.
    """
    if arenas <= 0:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to cap
        return False


def create_app(settings: Settings | None = None) -> VsyncApp:
    """Build the worker from ``settings`` (read from the environment when None)."""
    settings = settings or Settings()
    limit_malloc_arenas(settings.malloc_arena_max)
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    return VsyncApp(settings)
