"""Pulsar-to-stream adapter: the participant's ``dict-events`` topic into the Kafka key-events topic.

Each message is validated; a valid event is produced to Kafka keyed by its Pix key as a compact
record with its CID computed (``encode_change``), an invalid one to the dead-letter topic with its
reason and original bytes. Pulsar is acknowledged only after
Kafka has acknowledged the record (invariant I3); if Kafka fails, the batch is negatively
acknowledged and Pulsar redelivers it, which the fold absorbs (invariant I2). Dead-lettering
never depends on Pulsar's redelivery counter.

Each received batch goes to a :class:`Sink` in one call (``submit``): the sink queues its records
to Kafka in order (batched per partition by :class:`~vsync_stream.bridges.kafka_produce.BatchProducer`)
and hands back one awaitable for the whole batch. Acknowledgements are individual, per message id
of the batch: a cumulative acknowledgement is not allowed on a ``KeyShared`` subscription, and
pulsar-client's Python API has no list acknowledgement; the C++ client groups them on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pulsar

from vsync_stream.domain.events import KeyChange, change_of, decode_event
from vsync_stream.errors import InvalidEvent
from vsync_stream.metrics import EVENTS_FORWARDED, EVENTS_RECEIVED

log = logging.getLogger(__name__)

# A batch is taken when ``batch_size`` messages are there or after this wait: the wait bounds the
# latency a quiet stream adds (it was 100 ms; BENCHMARKS.md, latency).
RECEIVE_WAIT_MS = 10
MAX_IN_FLIGHT = 4  # batches handed to Kafka and not yet acknowledged by it
DEFAULT_BATCH_SIZE = 1000  # messages per receive, at most
STOP_WAIT_S = 30.0  # longest wait of stop() for the run loop (Kafka acknowledging what it was sent)

# A rejected message: (original bytes, why, where it came from).
Reject = tuple[bytes, InvalidEvent, dict[str, Any]]


class Sink(Protocol):
    """Where a received batch goes (Kafka)."""

    async def submit(self, changes: Sequence[KeyChange], rejects: Sequence[Reject]) -> Awaitable[Any]:
        """Queue a batch's records in order; the awaitable resolves once Kafka acknowledged all of them
        and raises if Kafka refused any."""
        ...


@dataclass
class Tally:
    """Running counts of one adapter (for a parent process that reports them; see adapter_processes)."""

    received: int = 0
    forwarded: int = 0  # accepted by Kafka
    on_forwarded: Callable[[], None] | None = None  # called after each batch Kafka accepted

_CONSUMER_TYPES = {
    "KeyShared": pulsar.ConsumerType.KeyShared,
    "Shared": pulsar.ConsumerType.Shared,
    "Failover": pulsar.ConsumerType.Failover,
    "Exclusive": pulsar.ConsumerType.Exclusive,
}


class PulsarSource:
    """A Pulsar consumer on the ``dict-events`` topic, driven from asyncio.

    Args:
        url: Pulsar service URL, e.g. ``pulsar://127.0.0.1:16650``.
        topic: the events topic.
        subscription: subscription name (durable; created at the earliest message).
        subscription_type: ``KeyShared`` (default), ``Shared``, ``Failover`` or ``Exclusive``.
        max_event_bytes: payloads above this size are dead-lettered as ``oversize``.
        batch_size: messages taken per receive (at most).
        client_options: extra ``pulsar.Client`` arguments, e.g. TLS and authentication
            (:func:`~vsync_stream.bridges.pulsar_security.pulsar_client_options`).
    """

    def __init__(self, url: str, topic: str, subscription: str, subscription_type: str = "KeyShared",
                 max_event_bytes: int = 16 * 1024, batch_size: int = DEFAULT_BATCH_SIZE,
                 client_options: Mapping[str, Any] | None = None, tally: Tally | None = None) -> None:
        self.url, self.topic, self.subscription = url, topic, subscription
        self.client_options = dict(client_options or {})
        self.subscription_type = subscription_type
        self.max_event_bytes = max_event_bytes
        self.batch_size = batch_size
        self.tally = tally if tally is not None else Tally()
        self._client: pulsar.Client | None = None
        self._consumer: Any = None
        self._stopping = False
        self._running = False
        self._finished = asyncio.Event()

    def _subscribe(self) -> None:
        self._client = pulsar.Client(self.url, operation_timeout_seconds=30, logger=client_logger(),
                                     **self.client_options)
        self._consumer = self._client.subscribe(
            self.topic,
            self.subscription,
            consumer_type=_CONSUMER_TYPES[self.subscription_type],
            initial_position=pulsar.InitialPosition.Earliest,
            receiver_queue_size=max(self.batch_size * 4, 1000),
            negative_ack_redelivery_delay_ms=1000,
            batch_receive_policy=pulsar.ConsumerBatchReceivePolicy(self.batch_size, 8 * 1024 * 1024, RECEIVE_WAIT_MS),
        )

    async def start(self) -> None:
        """Connect and subscribe (in a thread: the Pulsar client blocks)."""
        await asyncio.to_thread(self._subscribe)
        log.info("pulsar adapter subscribed to %s as %s (%s)", self.topic, self.subscription, self.subscription_type)

    async def stop(self) -> None:
        """Let :meth:`run` finish (its pending receive returns within ``RECEIVE_WAIT_MS``, what Kafka
        holds is acknowledged), then close the consumer and the client; unacknowledged messages are
        redelivered later. A receive must not be pending when the client closes: it may never return."""
        self._stopping = True
        if self._running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished.wait(), timeout=STOP_WAIT_S)
        client, self._client, self._consumer = self._client, None, None
        if client is not None:
            await asyncio.to_thread(client.close)

    async def run(self, sink: Sink) -> None:
        """Move messages until :meth:`stop`; each batch is acknowledged once Kafka holds it all.

        Batches are pipelined: the next one is received (in a thread) while this one is decoded,
        and handed to the producer while up to ``MAX_IN_FLIGHT`` earlier ones wait for Kafka's
        acknowledgement (records go to the producer in receive order, so Kafka keeps the order of
        each key). A batch Kafka did not accept is negatively acknowledged (Pulsar redelivers it)
        and the run ends with the error.
        """
        consumer = self._consumer
        in_flight: set[asyncio.Task[None]] = set()
        receive: asyncio.Future[Any] | None = None
        self._running = True
        self._finished.clear()
        try:
            while not self._stopping and consumer is not None:
                if receive is None:
                    receive = _receive(consumer)
                try:
                    messages = await receive
                except Exception:
                    if self._stopping:  # the client was closed under a pending receive
                        break
                    raise
                receive = _receive(consumer)  # the next batch arrives while this one is handled
                for task in [t for t in in_flight if t.done()]:
                    in_flight.discard(task)
                    task.result()  # raises a batch's Kafka error
                if not messages:
                    continue
                EVENTS_RECEIVED.inc(len(messages))
                self.tally.received += len(messages)
                changes: list[KeyChange] = []
                rejects: list[Reject] = []
                max_bytes = self.max_event_bytes
                for message in messages:
                    payload = message.data()
                    try:
                        changes.append(change_of(decode_event(payload, max_bytes)))
                    except InvalidEvent as exc:
                        rejects.append((payload, exc, {"topic": self.topic, "messageId": str(message.message_id())}))
                acked = await sink.submit(changes, rejects)
                in_flight.add(asyncio.create_task(self._settle(consumer, messages, acked)))
                if len(in_flight) >= MAX_IN_FLIGHT:
                    settled, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    for task in settled:
                        in_flight.discard(task)
                        task.result()
            if in_flight:  # stopping: what was sent is still acknowledged once Kafka holds it
                for result in await asyncio.gather(*in_flight, return_exceptions=True):
                    if isinstance(result, BaseException):
                        raise result
        finally:
            for task in in_flight:
                task.cancel()
            if receive is not None and not receive.done():  # its messages stay unacknowledged
                await asyncio.wait([receive], timeout=STOP_WAIT_S)
            self._running = False
            self._finished.set()

    async def _settle(self, consumer: Any, messages: list[Any], done: Awaitable[Any]) -> None:
        try:
            await done
        except Exception:
            log.exception("Kafka did not accept a batch of %d events; Pulsar will redeliver it", len(messages))
            await asyncio.to_thread(_negative_ack, consumer, messages)
            raise
        EVENTS_FORWARDED.inc(len(messages))  # Kafka holds them: forwarded, even if the Pulsar ack is lost
        self.tally.forwarded += len(messages)
        if self.tally.on_forwarded is not None:
            self.tally.on_forwarded()
        await asyncio.to_thread(_ack, consumer, messages)


def _receive(consumer: Any) -> asyncio.Future[Any]:
    """``batch_receive`` in a thread; a receive left pending at stop may fail later, unobserved."""
    future = asyncio.ensure_future(asyncio.to_thread(consumer.batch_receive))
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future


def _ack(consumer: Any, messages: list[Any]) -> None:
    # One call per message id (no list form in pulsar-client 3.x; cumulative is refused on
    # KeyShared); the client's ack grouping sends them to the broker together.
    acknowledge = consumer.acknowledge
    for message in messages:
        acknowledge(message)


def _negative_ack(consumer: Any, messages: list[Any]) -> None:
    for message in messages:
        consumer.negative_acknowledge(message)


def client_logger() -> Any:
    """The Pulsar C++ client's own console logger, warnings and errors only.

    Not a Python logger: with one, the client's I/O thread calls into Python (and takes the GIL)
    for its logging, which halved the adapter's rate (7,000 → 12,800-14,500 ev/s draining a backlog,
    BENCHMARKS.md step [6]). Its lines (broker trouble only) are in the client's own format.
    """
    return pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn)


def _quiet_logger() -> logging.Logger:
    """The Pulsar C++ client logs every connection at INFO; route it to a WARNING-level logger."""
    logger = logging.getLogger("pulsar.client")
    logger.setLevel(logging.WARNING)
    return logger


def ensure_subscription(url: str, topic: str, subscription: str, subscription_type: str = "KeyShared",
                        client_options: Mapping[str, Any] | None = None) -> None:
    """Create a durable subscription at the earliest message, so events published before the
    first worker starts are kept for it (Pulsar drops messages no subscription holds).

    The short-lived client logs through Pulsar's own console logger (errors only): with a Python
    logger, a process that used it may abort at exit ("terminate called without an active
    exception", apache/pulsar-client-python#256), seen at the end of a benchmark run.
    """
    client = pulsar.Client(url, operation_timeout_seconds=30, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error),
                           **(client_options or {}))
    try:
        consumer = client.subscribe(topic, subscription, consumer_type=_CONSUMER_TYPES[subscription_type],
                                    initial_position=pulsar.InitialPosition.Earliest)
        consumer.close()
    finally:
        client.close()
