"""Readiness probes (and a smoke test) for the local stack started by deploy/local/stack.

An open port is not readiness: Kafka accepts connections before it has a controller and
metadata, Pulsar before public/default exists. So each probe does the smallest real operation a
client needs and retries it until it succeeds or a deadline passes.

    probe.py kafka  --bootstrap 127.0.0.1:19092 [--deadline 90] [--pid N]
    probe.py pulsar --url pulsar://127.0.0.1:16650 [--deadline 180] [--pid N]
    probe.py smoke  --bootstrap ... --pulsar-url ... --dsn ...   (round trip through each service)

Exit status: 0 ready; 1 deadline passed (the last error is printed); 2 the server process
(--pid) exited while we waited, so waiting longer is pointless.
Only the project's venv is assumed (aiokafka, pulsar-client, asyncpg).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
import uuid

# The client libraries log every refused connection at ERROR while the server is still
# starting; the probe reports the outcome itself.
logging.basicConfig(level=logging.CRITICAL)


class ProcessGone(Exception):
    pass


def _alive(pid: int | None) -> bool:
    if not pid:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _retry(name: str, attempt, deadline: float, pid: int | None, interval: float = 0.5) -> int:
    """Call attempt() until it returns without raising; return the exit status."""
    end = time.monotonic() + deadline
    last: BaseException | None = None
    while True:
        if not _alive(pid):
            print(f"{name}: server process {pid} exited while waiting for readiness", file=sys.stderr)
            return 2
        try:
            attempt()
            return 0
        except Exception as exc:  # any failure means "not ready yet"
            last = exc
        if time.monotonic() >= end:
            print(f"{name}: not ready after {deadline:.0f}s; last error: {type(last).__name__}: {last}",
                  file=sys.stderr)
            return 1
        time.sleep(interval)


# --- Kafka: an admin client can list topics -------------------------------------------------

async def _kafka_list_topics(bootstrap: str) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await asyncio.wait_for(admin.start(), timeout=10)
        return list(await asyncio.wait_for(admin.list_topics(), timeout=10))
    finally:
        await admin.close()


def probe_kafka(args: argparse.Namespace) -> int:
    return _retry("kafka", lambda: asyncio.run(_kafka_list_topics(args.bootstrap)),
                  args.deadline, args.pid)


# --- Pulsar: a producer on public/default can send ------------------------------------------

def _pulsar_client(url: str):
    import pulsar

    quiet = logging.getLogger("pulsar-probe")
    quiet.setLevel(logging.CRITICAL)
    return pulsar.Client(url, operation_timeout_seconds=5, connection_timeout_ms=3000, logger=quiet)


def _pulsar_send(url: str, topic: str) -> None:
    client = _pulsar_client(url)
    try:
        producer = client.create_producer(topic, send_timeout_millis=5000)
        producer.send(b"ready?")
        producer.close()
    finally:
        client.close()


def probe_pulsar(args: argparse.Namespace) -> int:
    return _retry("pulsar", lambda: _pulsar_send(args.url, args.topic), args.deadline, args.pid, interval=1.0)


# --- Smoke test: one real round trip through each service -----------------------------------

async def _smoke_kafka(bootstrap: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = f"stack-smoke-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"v1", key=b"k1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"{topic}-g",
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), timeout=30)
        assert (msg.key, msg.value) == (b"k1", b"v1"), msg
        await consumer.commit()
    finally:
        await consumer.stop()
    print(f"kafka: produced and consumed 1 keyed message on {topic} (group commit ok)")


def _smoke_pulsar(url: str) -> None:
    import pulsar

    topic = f"persistent://public/default/stack-smoke-{uuid.uuid4().hex[:8]}"
    client = _pulsar_client(url)
    try:
        consumers = [
            client.subscribe(topic, "smoke-ks", consumer_type=pulsar.ConsumerType.KeyShared,
                             initial_position=pulsar.InitialPosition.Earliest)
            for _ in range(2)
        ]
        shared = client.subscribe(topic, "smoke-shared", consumer_type=pulsar.ConsumerType.Shared,
                                  initial_position=pulsar.InitialPosition.Earliest)
        producer = client.create_producer(topic, batching_enabled=False)
        sent = {(f"key-{i % 4}", f"m{i}") for i in range(20)}
        for key, value in sorted(sent):
            producer.send(value.encode(), partition_key=key)
        got, owner = set(), {}
        for consumer in consumers:
            while True:
                try:
                    msg = consumer.receive(timeout_millis=2000)
                except pulsar.Timeout:
                    break
                key = msg.partition_key()
                # Key_Shared: every message of a key goes to the same consumer.
                assert owner.setdefault(key, id(consumer)) == id(consumer), f"key {key} split"
                got.add((key, msg.data().decode()))
                consumer.acknowledge(msg)
        assert got == sent, (len(got), len(sent))
        n_shared = 0
        while n_shared < len(sent):
            shared.acknowledge(shared.receive(timeout_millis=10000))
            n_shared += 1
    finally:
        client.close()
    print(f"pulsar: 20 keyed messages on {topic}: Key_Shared kept keys on one consumer, "
          f"Shared received all, all acknowledged")


async def _smoke_postgres(dsn: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute("CREATE TEMP TABLE smoke (k text primary key, v int)")
        await conn.execute("INSERT INTO smoke VALUES ('a', 1)")
        assert await conn.fetchval("SELECT v FROM smoke WHERE k = 'a'") == 1
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    print(f"postgres: connected with {dsn.split('@')[-1]} (server {version}), temp table round trip ok")


def smoke(args: argparse.Namespace) -> int:
    failed = 0
    checks = [
        ("kafka", args.bootstrap, lambda: asyncio.run(_smoke_kafka(args.bootstrap))),
        ("pulsar", args.pulsar_url, lambda: _smoke_pulsar(args.pulsar_url)),
        ("postgres", args.dsn, lambda: asyncio.run(_smoke_postgres(args.dsn))),
    ]
    for name, target, check in checks:
        if not target:
            continue
        try:
            check()
        except Exception as exc:
            failed += 1
            print(f"{name}: smoke test FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    k = sub.add_parser("kafka")
    k.add_argument("--bootstrap", required=True)
    p = sub.add_parser("pulsar")
    p.add_argument("--url", required=True)
    p.add_argument("--topic", default="persistent://public/default/vsync-stack-ready")
    for s in (k, p):
        s.add_argument("--deadline", type=float, default=60.0, help="seconds to keep retrying")
        s.add_argument("--pid", type=int, help="give up early if this process exits")

    sm = sub.add_parser("smoke")
    sm.add_argument("--bootstrap")
    sm.add_argument("--pulsar-url")
    sm.add_argument("--dsn")

    args = parser.parse_args(argv)
    return {"kafka": probe_kafka, "pulsar": probe_pulsar, "smoke": smoke}[args.cmd](args)


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # pulsar-client's C++ runtime can abort ("terminate called without an active exception")
    # in static destructors at interpreter exit when a client from a failed attempt still has
    # threads; the outcome is already known, so skip the interpreter's teardown.
    os._exit(status)
