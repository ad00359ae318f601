"""Pulsar-to-stream adapter: the participant's ``dict-events`` topic into the Kafka key-events topic.

Each message is validated; a valid event is produced to Kafka keyed by its Pix key as a compact
record with its CID computed (``encode_change``), an invalid one to the dead-letter topic with its
reason and original bytes. Pulsar is acknowledged only after
Kafka has acknowledged the record (invariant I3); if Kafka fails, the batch is negatively
acknowledged and Pulsar redelivers it, which the fold absorbs (invariant I2). Dead-lettering
never depends on Pulsar's redelivery counter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pulsar

from vsync_stream.domain.events import KeyChange, change_of, decode_event
from vsync_stream.errors import InvalidEvent
from vsync_stream.metrics import EVENTS_FORWARDED, EVENTS_RECEIVED

log = logging.getLogger(__name__)

# A batch is taken when ``batch_size`` messages are there or after this wait: the wait bounds the
# latency a quiet stream adds (it was 100 ms; BENCHMARKS.md, latency).
RECEIVE_WAIT_MS = 10
MAX_IN_FLIGHT = 4  # batches handed to Kafka and not yet acknowledged by it

# forward(change) / dead_letter(payload, error, source) queue a Kafka record and return an
# awaitable that resolves once Kafka acknowledged it.
Forward = Callable[[KeyChange], Awaitable[Awaitable[Any]]]
DeadLetter = Callable[[bytes, InvalidEvent, dict[str, Any]], Awaitable[Awaitable[Any]]]

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
                 max_event_bytes: int = 16 * 1024, batch_size: int = 500,
                 client_options: Mapping[str, Any] | None = None) -> None:
        self.url, self.topic, self.subscription = url, topic, subscription
        self.client_options = dict(client_options or {})
        self.subscription_type = subscription_type
        self.max_event_bytes = max_event_bytes
        self.batch_size = batch_size
        self._client: pulsar.Client | None = None
        self._consumer: Any = None
        self._stopping = False

    def _subscribe(self) -> None:
        self._client = pulsar.Client(self.url, operation_timeout_seconds=30, logger=_quiet_logger(),
                                     **self.client_options)
        self._consumer = self._client.subscribe(
            self.topic,
            self.subscription,
            consumer_type=_CONSUMER_TYPES[self.subscription_type],
            initial_position=pulsar.InitialPosition.Earliest,
            receiver_queue_size=max(self.batch_size * 2, 1000),
            negative_ack_redelivery_delay_ms=1000,
            batch_receive_policy=pulsar.ConsumerBatchReceivePolicy(self.batch_size, 8 * 1024 * 1024, RECEIVE_WAIT_MS),
        )

    async def start(self) -> None:
        """Connect and subscribe (in a thread: the Pulsar client blocks)."""
        await asyncio.to_thread(self._subscribe)
        log.info("pulsar adapter subscribed to %s as %s (%s)", self.topic, self.subscription, self.subscription_type)

    async def stop(self) -> None:
        """Close the consumer and the client; unacknowledged messages are redelivered later."""
        self._stopping = True
        client, self._client, self._consumer = self._client, None, None
        if client is not None:
            await asyncio.to_thread(client.close)

    async def run(self, forward: Forward, dead_letter: DeadLetter) -> None:
        """Move messages until :meth:`stop`; each batch is acknowledged once Kafka holds it all.

        Batches are pipelined: the next one is received and handed to the producer while up to
        ``MAX_IN_FLIGHT`` earlier ones wait for Kafka's acknowledgement (records go to the producer
        in receive order, so Kafka keeps the order of each key). A batch Kafka did not accept is
        negatively acknowledged (Pulsar redelivers it) and the run ends with the error.
        """
        consumer = self._consumer
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping and consumer is not None:
                messages = await asyncio.to_thread(consumer.batch_receive)
                for task in [t for t in in_flight if t.done()]:
                    in_flight.discard(task)
                    task.result()  # raises a batch's Kafka error
                if not messages:
                    continue
                EVENTS_RECEIVED.inc(len(messages))
                pending = []
                for message in messages:
                    payload = message.data()
                    try:
                        change = change_of(decode_event(payload, self.max_event_bytes))
                    except InvalidEvent as exc:
                        source = {"topic": self.topic, "messageId": str(message.message_id())}
                        pending.append(await dead_letter(payload, exc, source))
                    else:
                        pending.append(await forward(change))
                in_flight.add(asyncio.create_task(self._settle(consumer, messages, pending)))
                if len(in_flight) >= MAX_IN_FLIGHT:
                    done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        in_flight.discard(task)
                        task.result()
            if in_flight:  # stopping: what was sent is still acknowledged once Kafka holds it
                for result in await asyncio.gather(*in_flight, return_exceptions=True):
                    if isinstance(result, BaseException):
                        raise result
        finally:
            for task in in_flight:
                task.cancel()

    async def _settle(self, consumer: Any, messages: list[Any], pending: list[Any]) -> None:
        try:
            await asyncio.gather(*pending)
        except Exception:
            log.exception("Kafka did not accept a batch of %d events; Pulsar will redeliver it", len(messages))
            await asyncio.to_thread(_negative_ack, consumer, messages)
            raise
        await asyncio.to_thread(_ack, consumer, messages)
        EVENTS_FORWARDED.inc(len(messages))


def _ack(consumer: Any, messages: list[Any]) -> None:
    for message in messages:
        consumer.acknowledge(message)


def _negative_ack(consumer: Any, messages: list[Any]) -> None:
    for message in messages:
        consumer.negative_acknowledge(message)


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
