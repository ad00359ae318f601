"""Fault-injection driver: publishes a chaos stream to Pulsar in bursts while the worker is
SIGKILLed and Kafka and Pulsar are restarted, and writes bad records straight to Kafka.

The stream comes from ``chaos_stream``; the test (``test_chaos.py``) checks the durable facts the
run leaves behind. Only where in the worker's processing a fault lands depends on timing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pulsar
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from tests.integration.chaos_stream import ChaosProfile, Message
from tests.integration.helpers import check_worker_alive, wait_answering
from vsync_stream.worker_process import WorkerProcess

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "deploy" / "local" / "stack"
STACK_RESTART_TIMEOUT_S = 300.0

log = logging.getLogger(__name__)

FaultKind = Literal["kill", "kill during restart", "restart kafka", "restart pulsar"]


# --------------------------------------------------------------------------------------------
# publishing
# --------------------------------------------------------------------------------------------

BURST = 1500  # messages published at one rate
BURST_FACTORS = (0.3, 0.6, 1.0, 2.0, 4.0)  # burst rate / base rate (harmonic mean ~0.74)


class ChaosPublisher:
    """Publishes a stream to Pulsar from its own thread in bursts around a base rate, as the
    connector would.

    Sends never time out (``send_timeout_millis=0``): across a Pulsar restart the client keeps the
    pending messages and resends them, in order, once reconnected. A send that fails anyway is
    published again at the end (counted in :attr:`republished`).
    """

    def __init__(self, service_url: str, topic: str, messages: list[Message], rate: float, seed: int) -> None:
        self.service_url, self.topic, self.messages, self.rate = service_url, topic, messages, rate
        self._burst_rng = random.Random(seed)
        self.position = 0  # messages handed to the client so far
        self.acked = 0
        self.republished = 0
        self._failed: list[int] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._client: pulsar.Client | None = None
        self.error: BaseException | None = None

    def _callback(self, index: int) -> Callable[[Any, Any], None]:
        def done(result: Any, _msg_id: Any) -> None:
            with self._lock:
                if result == pulsar.Result.Ok:
                    self.acked += 1
                else:
                    self._failed.append(index)
        return done

    def _run(self) -> None:
        try:
            client = self._client = pulsar.Client(self.service_url, operation_timeout_seconds=120,
                                                  logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
        except BaseException as exc:  # reported by wait()
            self.error = exc
            return
        try:
            producer = client.create_producer(
                self.topic, batching_enabled=True, batching_type=pulsar.BatchingType.KeyBased,
                batching_max_publish_delay_ms=5, send_timeout_millis=0, block_if_queue_full=True,
                max_pending_messages=500_000, max_pending_messages_across_partitions=500_000)
            due = time.monotonic()
            for index, message in enumerate(self.messages):
                if self._stop.is_set():
                    break
                if index % BURST == 0:
                    # Bursty traffic: each burst at its own rate, so faults find the worker idle
                    # at some moments and far behind at others.
                    rate = self.rate * self._burst_rng.choice(BURST_FACTORS)
                if index % 100 == 0:
                    ahead = due - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)  # pacing, not waiting for a condition
                    due += 100 / rate
                producer.send_async(message.payload, self._callback(index), partition_key=message.key)
                self.position = index + 1
            producer.flush()
            for _attempt in range(5):
                with self._lock:
                    retry, self._failed = sorted(self._failed), []
                if not retry:
                    break
                for index in retry:
                    message = self.messages[index]
                    producer.send_async(message.payload, self._callback(index), partition_key=message.key)
                    self.republished += 1
                producer.flush()
            producer.close()
        except BaseException as exc:  # reported by wait()
            self.error = exc
        finally:
            client.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chaos-publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop publishing (if still running) and wait for the thread to close its client."""
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join(timeout_s / 2)
        if self._thread.is_alive() and self._client is not None:
            self._client.close()  # unblocks a flush waiting for a broker that is gone
            self._thread.join(timeout_s / 2)

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    async def wait(self, timeout_s: float) -> None:
        """Wait until every message is published and acknowledged.

        Raises:
            AssertionError: the publisher failed or did not finish in time.
        """
        deadline = time.monotonic() + timeout_s
        while not self.done:
            if time.monotonic() > deadline:
                raise AssertionError(f"publishing did not finish in {timeout_s:.0f} s "
                                     f"({self.position}/{len(self.messages)} sent, {self.acked} acked)")
            await asyncio.sleep(0.5)
        if self.error is not None:
            raise AssertionError(f"publishing failed: {self.error!r}") from self.error
        if self._failed:
            raise AssertionError(f"{len(self._failed)} publications still failing after retries")


async def inject_kafka_garbage(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]],
                               publisher: ChaosPublisher, seed: int) -> int:
    """Write ``records`` to the key-events topic one by one, at seeded places of the publication.

    A record that Kafka does not take (it may be restarting) is sent again until it is.

    Returns:
        How many records were written.
    """
    rng = random.Random(seed)
    places = sorted(rng.randrange(len(publisher.messages)) for _ in records)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=20_000)
    written = 0
    try:
        await producer.start()
        for place, (key, value) in zip(places, records, strict=True):
            while publisher.position < place and not publisher.done:
                await asyncio.sleep(0.2)
            while True:
                try:
                    await producer.send_and_wait(topic, value, key=key)
                    break
                except KafkaError as exc:
                    log.info("garbage record not taken (%s); sending it again", exc)
                    await asyncio.sleep(1.0)
            written += 1
    finally:
        await producer.stop()
    return written


# --------------------------------------------------------------------------------------------
# faults
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Fault:
    """A fault fired once the publisher has sent ``at`` messages."""

    at: int
    kind: FaultKind


@dataclass
class FaultLog:
    """What was injected, when, and how long each took."""

    kills: int = 0
    kafka_restarts: int = 0
    pulsar_restarts: int = 0
    timeline: list[str] = field(default_factory=list)


def plan_faults(profile: ChaosProfile, messages: int) -> list[Fault]:
    """Spread the faults over 10-85 % of the stream, one per stratum, at seeded random places."""
    rng = random.Random(profile.seed + 5)
    kinds: list[FaultKind] = ["kill"] * profile.kills + ["kill during restart"] * profile.kills_during_restart
    kinds += ["restart kafka"] * profile.kafka_restarts + ["restart pulsar"] * profile.pulsar_restarts
    rng.shuffle(kinds)
    lo, hi = 0.10 * messages, 0.85 * messages
    width = (hi - lo) / max(len(kinds), 1)
    return [Fault(int(lo + width * (k + rng.uniform(0.1, 0.9))), kind) for k, kind in enumerate(kinds)]


def _stack(*args: str) -> tuple[int, str]:
    proc = subprocess.run([str(STACK), *args], env=dict(os.environ), capture_output=True, text=True,
                          timeout=STACK_RESTART_TIMEOUT_S, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def restart_broker(name: str, attempts: int = 4) -> str:
    """``deploy/local/stack restart <name>`` in this process's environment (so it restarts the
    stack the tests run against: ``.local/`` by default, or ``$VSYNC_STACK_DIR``).

    If the broker cannot bind its port again right away, ``stack up <name>`` is retried: a port in
    the kernel's ephemeral range (e.g. 49092) can be taken for a moment by a client that, retrying
    its connection while the broker is down, connected to itself (TCP simultaneous open).

    Returns:
        The script's output.

    Raises:
        AssertionError: the restart failed, or the service is external (nothing was restarted).
    """
    code, output = _stack("restart", name)
    if f"{name}: stopped (pid" not in output:
        raise AssertionError(f"`{STACK} restart {name}` did not stop a local {name} (exit {code}):\n{output}")
    for _attempt in range(attempts - 1):
        if code == 0 and f"{name}: ready on" in output:
            return output
        if "Address already in use" not in output:
            break
        log.warning("%s could not bind its port again; retrying `stack up %s`", name, name)
        time.sleep(2.0)  # let the client notice its self-connection and close it
        code, more = _stack("up", name)
        output += more
    if code != 0 or f"{name}: ready on" not in output:
        raise AssertionError(f"`{STACK} restart {name}` did not bring {name} back (exit {code}):\n{output}")
    return output


async def run_faults(faults: list[Fault], publisher: ChaosPublisher, worker: WorkerProcess, rng: random.Random,
                     describe: Callable[[], Awaitable[str]] | None = None, ready_timeout_s: float = 180.0) -> FaultLog:
    """Fire each fault when the publisher reaches its place; after each one, wait until the worker
    is ready again, so every fault hits a running pipeline.

    A kill is SIGKILL (nothing flushed), a random pause of up to 2 s, and a restart on the same data
    dir; a kill during restart kills the restarted worker once more while it starts. A broker
    restart is ``deploy/local/stack restart`` (graceful stop, start, wait for ready); the worker and
    the publisher keep running through it.
    """
    done = FaultLog()
    t0 = time.monotonic()
    for fault in faults:
        while publisher.position < fault.at and not publisher.done:
            check_worker_alive(worker)
            await asyncio.sleep(0.2)
        check_worker_alive(worker)
        state = await describe() if describe is not None else ""
        started, position = time.monotonic(), publisher.position
        if fault.kind.startswith("kill"):
            worker.kill()
            await asyncio.sleep(rng.uniform(0.0, 2.0))  # the crash's downtime, part of the scenario
            worker.start()
            done.kills += 1
            if fault.kind == "kill during restart":
                await wait_answering(worker, timeout_s=ready_timeout_s)
                await asyncio.sleep(rng.uniform(0.0, 0.5))
                worker.kill()
                worker.start()
                done.kills += 1
        else:
            name = fault.kind.split()[1]
            await asyncio.to_thread(restart_broker, name)
            if name == "kafka":
                done.kafka_restarts += 1
            else:
                done.pulsar_restarts += 1
        await worker.wait_ready(timeout_s=ready_timeout_s)
        done.timeline.append(f"{started - t0:7.1f}s  {fault.kind:<15} at message {position:>7} (planned {fault.at}"
                             f"{', ' + state if state else ''}); worker ready again after "
                             f"{time.monotonic() - started:.1f}s")
    return done
