"""``vsync-stream bootstrap``: load the participant's own export into the entries table's changelog.

How it runs (README, "Going live"):

1. ``vsync-stream bootstrap --prepare`` before the export is taken: creates the product's Kafka
   topics (as a worker would) and the Pulsar subscription at the earliest message, so every event
   published from then on is kept for the workers; checks that no worker of ``VSYNC_APP_ID`` runs
   and that the changelog is empty.
2. The participant takes its export (``vsync_stream/domain/export.py``: one column set, the CID
   fields, the RequestId and the ordering token of the key's last event).
3. ``vsync-stream bootstrap EXPORT...`` with the workers still stopped. **Scan**: every row is
   validated and its CID computed; a bad row goes to the rejects file with its file, line and
   reason; the good ones are spooled to disk in buckets, one group of buckets per changelog
   partition (Kafka's default partitioner: murmur2 of the Pix key's UTF-8 bytes, as the adapter
   places key events). **Load**: bucket by bucket, a key found on several rows of the export is
   rejected on every one of them (no row of it is loaded: the export contradicts itself, so the
   first reconciliation takes the DICT's version), and every other row is produced to its
   changelog partition as an :class:`~vsync_stream.domain.fold.EntryState` (the exact bytes the
   fold writes) in large Kafka record batches. After each bucket is acknowledged by Kafka, the
   checkpoint (``<rejects>.state``) records it.
4. Start the workers: they restore the table from the changelog (bulk restore), then fold what
   Pulsar kept. An event older than a row's token is stale, a newer one applies, the same event id
   is a duplicate (DESIGN 3.3), so events published during the load are neither lost nor applied
   twice.

Resumable: after a SIGKILL the same command goes on from the checkpoint (the scan starts over if it
had not finished; the load re-produces at most the bucket in flight — rewriting identical records
into a compacted changelog changes no row). The rejects file is cut back to the checkpoint, so the
end state (changelog rows, rejects, summary) is that of an uninterrupted load.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_fixed
from tqdm import tqdm

from vsync_stream.bootstrap_spool import Rejects, bucket_layout, read_bucket, scan, split_duplicates
from vsync_stream.bridges.kafka_security import kafka_security
from vsync_stream.bridges.kafka_topics import ensure_topics, product_topics
from vsync_stream.domain.vsync import VSyncLedger
from vsync_stream.errors import VsyncError
from vsync_stream.names import changelog_topic
from vsync_stream.settings import Settings

STATE_FORMAT = 1
BATCH_BYTES = 900_000  # one Kafka record batch; the broker's message.max.bytes defaults to 1 MB
IN_FLIGHT_BATCHES = 32


class BootstrapError(VsyncError):
    """The load cannot start or go on; the message says what to do."""


@dataclass(frozen=True, slots=True)
class LoadPaths:
    """Where one load keeps its files: rejects, checkpoint, spool and summary."""

    rejects: Path
    summary: Path

    @property
    def state(self) -> Path:
        """The checkpoint, next to the rejects file."""
        return self.rejects.with_name(self.rejects.name + ".state")

    @property
    def spool(self) -> Path:
        """The spooled rows, next to the rejects file (about 300 bytes of disk per row)."""
        return self.rejects.with_name(self.rejects.name + ".spool")


def fingerprint(exports: list[str]) -> list[dict[str, Any]]:
    """What identifies the input of a load: each file's absolute path, size and mtime (``-``: stdin)."""
    out: list[dict[str, Any]] = []
    for name in exports:
        if name == "-":
            out.append({"path": "-"})
            continue
        st = os.stat(name)
        out.append({"path": str(Path(name).resolve()), "size": st.st_size, "mtimeNs": st.st_mtime_ns})
    return out


def read_state(path: Path) -> dict[str, Any] | None:
    """The checkpoint of a load, or None when there is none."""
    try:
        doc: dict[str, Any] = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise BootstrapError(f"the checkpoint {path} is unreadable ({exc}); delete it and the spool next to it to "
                             "start the load over") from None
    return doc


def write_state(path: Path, doc: dict[str, Any]) -> None:
    """Replace the checkpoint atomically (write, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class KafkaSide:
    """The Kafka clients of a load: the checks before it, and the producer of changelog records."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = changelog_topic(settings.app_id)
        self.kwargs = kafka_security(settings).client_kwargs()
        self.producer: AIOKafkaProducer | None = None

    async def ensure_topics(self) -> None:
        """Create the product's topics as a worker would (same shape), or check the existing ones."""
        s = self.settings
        await ensure_topics(s.kafka_bootstrap, product_topics(s.key_events_topic, self.topic, s.dead_letter_topic,
                                                              s.partitions, s.core_notices_topic),
                            s.replication_factor, client_kwargs=self.kwargs)

    async def group_members(self) -> int:
        """How many live members the workers' consumer group (``VSYNC_APP_ID``) has."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap, client_id="vsync-bootstrap",
                                    **self.kwargs)
        await admin.start()
        try:
            # A fresh cluster creates its offsets topic on the first coordinator lookup: retriable.
            async for attempt in AsyncRetrying(retry=retry_if_exception(lambda e: getattr(e, "retriable", False)),
                                               wait=wait_fixed(0.5), stop=stop_after_delay(60), reraise=True):
                with attempt:
                    responses = await admin.describe_consumer_groups([self.settings.app_id])
        finally:
            await admin.close()
        members = 0
        for response in responses:
            for group in response.groups:
                members += len(group[5])  # (error, group id, state, protocol type, protocol, members, …)
        return members

    async def changelog_sizes(self) -> dict[int, tuple[int, int]]:
        """Per changelog partition: (first offset, end offset)."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False,
                                    **self.kwargs)
        await consumer.start()
        try:
            tps = [TopicPartition(self.topic, p) for p in range(self.settings.partitions)]
            first = await consumer.beginning_offsets(tps)
            end = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
        return {tp.partition: (first[tp], end[tp]) for tp in tps}

    async def start_producer(self) -> None:
        """Start the producer (all replicas acknowledge; large batches)."""
        self.producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all",
                                         max_batch_size=BATCH_BYTES + 64 * 1024, max_request_size=8 * 1024 * 1024,
                                         linger_ms=5, **self.kwargs)
        await self.producer.start()

    async def stop(self) -> None:
        """Stop the producer, flushing what it holds."""
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None

    async def produce(self, partition: int, items: dict[bytes, bytes], bar: tqdm[Any] | None = None) -> None:
        """Produce ``items`` (Pix key → encoded state) to one changelog partition; return once all are acknowledged.

        Raises:
            aiokafka.errors.KafkaError: a batch was not delivered (the caller stops; the checkpoint
                is not advanced, so the bucket is produced again on the next run).
        """
        producer = self.producer
        assert producer is not None
        pending: list[asyncio.Future[Any]] = []
        builder = producer.create_batch()
        size = 0
        for key, value in items.items():
            if size + len(key) + len(value) > BATCH_BYTES or builder.append(timestamp=None, key=key,
                                                                            value=value) is None:
                pending.append(await producer.send_batch(builder, self.topic, partition=partition))
                if bar is not None:
                    bar.update(builder.record_count())
                builder, size = producer.create_batch(), 0
                if builder.append(timestamp=None, key=key, value=value) is None:
                    raise BootstrapError(f"a record of {len(key) + len(value)} bytes does not fit a Kafka batch")
                if len(pending) >= IN_FLIGHT_BATCHES:
                    await asyncio.gather(*pending)
                    pending = []
            size += len(key) + len(value) + 16
        if builder.record_count():
            pending.append(await producer.send_batch(builder, self.topic, partition=partition))
            if bar is not None:
                bar.update(builder.record_count())
        await asyncio.gather(*pending)


# -- the load ------------------------------------------------------------------------------------

def _config(settings: Settings) -> dict[str, Any]:
    return {"appId": settings.app_id, "partitions": settings.partitions, "changelog": changelog_topic(settings.app_id),
            "participants": sorted(settings.participants)}


async def check_idle(kafka: KafkaSide, state: dict[str, Any] | None) -> dict[int, tuple[int, int]]:
    """Refuse to load while a worker runs, or into a table that holds rows of anything but this load.

    Returns:
        The changelog's (first, end) offsets per partition.

    Raises:
        BootstrapError: a worker of the app id is a live member of its consumer group, the
            changelog already holds records (new load), or it grew by more than this load wrote
            (resumed load).
    """
    app_id = kafka.settings.app_id
    members = await kafka.group_members()
    if members:
        raise BootstrapError(f"{members} worker(s) of VSYNC_APP_ID={app_id} are running: stop every worker before "
                             "the load and start them after it (they would write the same changelog meanwhile)")
    sizes = await kafka.changelog_sizes()
    if state is None:
        busy = sorted(p for p, (first, end) in sizes.items() if end > first)
        if busy:
            raise BootstrapError(f"the changelog {kafka.topic} already holds records (partitions {busy}): the entries "
                                 "table is not empty. A bootstrap fills an empty table only; to load a new base, use a "
                                 "new VSYNC_APP_ID (new consumer group and changelog) and empty VSYNC_DATA_DIR")
        return sizes
    for partition, (_first, end) in sizes.items():
        grown = end - state["startOffsets"][str(partition)]
        if grown > state["attempted"][str(partition)]:
            raise BootstrapError(f"changelog partition {partition} of {kafka.topic} holds {grown} records written "
                                 f"since this load started, more than the {state['attempted'][str(partition)]} it "
                                 "produced: something else wrote the table meanwhile (a worker?). Start over with a "
                                 "new VSYNC_APP_ID, after deleting the checkpoint and the spool")
    return sizes


def ensure_pulsar_subscription(settings: Settings) -> None:
    """Create the workers' Pulsar subscription at the earliest message unless it exists (no-op then)."""
    from vsync_stream.bridges.pulsar_security import pulsar_client_options
    from vsync_stream.bridges.pulsar_source import ensure_subscription

    ensure_subscription(settings.pulsar_url, settings.pulsar_topic, settings.pulsar_subscription,
                        settings.pulsar_subscription_type, client_options=pulsar_client_options(settings))


async def prepare(settings: Settings) -> None:
    """Step 1 of a go-live: topics, the Pulsar subscription, and the checks; run before the export is taken."""
    kafka = KafkaSide(settings)
    try:
        await kafka.ensure_topics()
        await check_idle(kafka, None)
    except KafkaError as exc:
        raise BootstrapError(f"Kafka failed ({type(exc).__name__}: {exc}); check VSYNC_KAFKA_BOOTSTRAP") from None
    ensure_pulsar_subscription(settings)


def summary_rows(settings: Settings, ledger: VSyncLedger) -> list[dict[str, Any]]:
    """One row per configured (participant, key type): entries and VSync (64 hex)."""
    return [{"participant": p, "keyType": t, "entries": ledger.count(p, t), "vsync": f"{ledger.vsync(p, t):064x}"}
            for p in settings.participants for t in settings.key_types]


async def run_load(settings: Settings, exports: list[str], paths: LoadPaths, progress: bool = True,
                   subscribe: bool = True, jobs: int = 1) -> dict[str, Any]:
    """Load the exports into the entries changelog, resuming from the checkpoint if there is one.

    Args:
        settings: the workers' settings (app id, partitions, participants, Kafka, Pulsar).
        exports: export files (``-`` = stdin), loaded in this order.
        paths: rejects, checkpoint, spool and summary paths.
        progress: show progress bars on stderr.
        subscribe: create the Pulsar subscription if missing (it should exist since before the export).
        jobs: processes scanning a plain JSON Lines file (one byte range each).

    Returns:
        The summary: ``{"rows", "loaded", "rejected", "rejectsFile", "changelog", "pairs": [...]}``.

    Raises:
        BootstrapError: a precondition does not hold, or the checkpoint belongs to another load.
        ExportFormatError: an input is not an export.
        ConfigurationError: Kafka cannot be reached, or its topics have the wrong shape.
    """
    try:
        inputs = fingerprint(exports)
    except OSError as exc:
        raise BootstrapError(f"cannot read the export {exc.filename}: {exc.strerror}") from None
    config = _config(settings)
    state = read_state(paths.state)
    if state is not None:
        if state.get("format") != STATE_FORMAT or state.get("config") != config:
            raise BootstrapError(f"the checkpoint {paths.state} belongs to a load with another configuration "
                                 f"({state.get('config')}); use other --rejects, or delete the checkpoint and the "
                                 "spool to start over")
        stdin_only = all(i["path"] == "-" for i in inputs + state["inputs"])
        # An unfinished scan loaded nothing: it starts over, on whatever files are given now.
        if state["phase"] != "scan" and state["inputs"] != inputs and not stdin_only:
            raise BootstrapError(f"the checkpoint {paths.state} was written for other export files (or they changed "
                                 "since): run the same command on the same files, or delete the checkpoint and "
                                 "the spool to start over")
        if state["phase"] == "done":
            summary: dict[str, Any] = state["summary"]
            return summary
    kafka = KafkaSide(settings)
    try:
        await kafka.ensure_topics()
        if state is None or state["phase"] == "scan":
            sizes = await check_idle(kafka, None)
            if subscribe:
                ensure_pulsar_subscription(settings)
            state = {"format": STATE_FORMAT, "config": config, "inputs": inputs, "phase": "scan"}
            paths.state.parent.mkdir(parents=True, exist_ok=True)
            write_state(paths.state, state)
            rejects = Rejects(paths.rejects, 0)
            scanned = VSyncLedger()
            rows = scan(exports, frozenset(settings.participants), settings.partitions, paths.spool, rejects, scanned,
                        progress, jobs)
            state.update(phase="load", rows=rows, rejectsBytes=rejects.flush(), rejected=rejects.count,
                         scanRejected=rejects.count, bucketsDone=0, loaded=0, ledger=scanned.to_json(),
                         startOffsets={str(p): end for p, (_first, end) in sizes.items()},
                         attempted={str(p): 0 for p in sizes})
            write_state(paths.state, state)
        else:
            await check_idle(kafka, state)
            rejects = Rejects(paths.rejects, state["rejectsBytes"])
            rejects.count = state["rejected"]
        try:
            await _load_buckets(kafka, settings, exports, paths, state, rejects, progress)
        finally:
            rejects.close()
    except KafkaError as exc:
        raise BootstrapError(f"Kafka failed during the load ({type(exc).__name__}: {exc}); run the same command "
                             "again to go on from the checkpoint") from None
    finally:
        await kafka.stop()
    ledger = VSyncLedger.from_json(state["ledger"])
    summary = {"rows": state["rows"], "loaded": state["loaded"], "rejected": state["rejected"],
               "rejectsFile": str(paths.rejects), "changelog": kafka.topic, "pairs": summary_rows(settings, ledger)}
    state.update(phase="done", summary=summary)
    write_state(paths.state, state)
    shutil.rmtree(paths.spool, ignore_errors=True)
    return summary


async def _load_buckets(kafka: KafkaSide, settings: Settings, exports: list[str], paths: LoadPaths,
                        state: dict[str, Any], rejects: Rejects, progress: bool) -> None:
    from vsync_stream.domain.fold import EntryState

    labels = ["<stdin>" if name == "-" else name for name in exports]
    subs = bucket_layout(settings.partitions)
    buckets = settings.partitions * subs
    ledger = VSyncLedger.from_json(state["ledger"])
    await kafka.start_producer()
    total = state["rows"] - state["scanRejected"]
    with tqdm(total=total, initial=state["loaded"], desc="loading", unit="row", unit_scale=True, file=sys.stderr,
              disable=not progress, mininterval=1.0) as bar:
        for bucket in range(state["bucketsDone"], buckets):
            partition = bucket // subs
            records = read_bucket(paths.spool, bucket)
            unique, duplicated = split_duplicates(records)
            if duplicated:  # the scan counted their rows in: take them out
                for _line, _file, key, value in records:
                    if key in duplicated:
                        row = EntryState.decode(value)
                        ledger.remove(row.participant, row.key_type, row.cid)  # type: ignore[arg-type]
            for places in sorted(duplicated.values()):
                shown = ", ".join(f"{labels[f]}:{line}" for f, line in places[:5]) + (" …" if len(places) > 5 else "")
                for file_index, line in places:
                    rejects.add(labels[file_index], line, "duplicate_key",
                                f"the same key is on {len(places)} rows of the export ({shown}); none of them is "
                                "loaded (the first reconciliation takes the DICT's entry)")
            bar.update(sum(len(p) for p in duplicated.values()))
            state["attempted"][str(partition)] += len(unique)
            write_state(paths.state, state)  # before producing: a resumed load knows what may be there
            await kafka.produce(partition, unique, bar)
            del records
            state.update(bucketsDone=bucket + 1, rejectsBytes=rejects.flush(), rejected=rejects.count,
                         loaded=state["loaded"] + len(unique), ledger=ledger.to_json())
            write_state(paths.state, state)

