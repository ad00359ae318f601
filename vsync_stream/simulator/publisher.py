"""Publishes key events to Pulsar as the participant's connector would (DESIGN 3.5, 4.1).

One message per event on ``dict-events``: message key (partition key) = the Pix key, payload =
the contract JSON (:func:`~vsync_stream.domain.events.encode_event`), event time = ``occurredAt``.
Batching is on and sends are asynchronous with a bounded number in flight; :meth:`flush` waits for
every acknowledgement and raises if any send failed.

pulsar-client is synchronous and runs callbacks on its own I/O thread. The publisher keeps the
in-flight accounting under a ``threading.Condition`` so it works from plain threads
(``*_sync`` methods, ``with``) and from asyncio (``async`` methods, ``async with``): the fast path
never blocks the event loop, and waiting for capacity or acks happens in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

import pulsar

from vsync_stream.domain.events import KeyEvent, encode_event
from vsync_stream.errors import PublishFailed

log = logging.getLogger(__name__)

DEFAULT_TOPIC = "persistent://public/default/dict-events"
_YIELD_EVERY = 1000  # publish_many gives the event loop a turn every this many messages
_MAX_ERRORS_KEPT = 10


class EventPublisher:
    """A Pulsar producer of key events, usable from asyncio and from plain synchronous code.

    Args:
        service_url: ``pulsar://host:port``; ignored when ``client`` is given.
        topic: the topic to publish on.
        client: an existing ``pulsar.Client`` to use (not closed by :meth:`stop`); the publisher
            creates and owns one when None.
        max_in_flight: sends not yet acknowledged before ``publish`` waits, messages.
        batching_max_messages: messages per batch at most.
        batching_max_publish_delay_ms: how long a batch may wait to fill, milliseconds.
        batching_type: ``pulsar.BatchingType.Default`` (fast); use ``KeyBased`` if the consumers
            read with a Key_Shared subscription, which needs one key per batch to keep key order.
        send_timeout_ms: a send not acknowledged within this time fails, milliseconds.
        operation_timeout_s: timeout of client operations such as creating the producer, seconds.
        client_options: extra ``pulsar.Client`` arguments when the publisher creates its client, e.g.
            TLS and authentication (:func:`~vsync_stream.bridges.pulsar_security.pulsar_client_options`).
    """

    def __init__(
        self,
        service_url: str | None = None,
        topic: str = DEFAULT_TOPIC,
        *,
        client: pulsar.Client | None = None,
        max_in_flight: int = 20_000,
        batching_max_messages: int = 1000,
        batching_max_publish_delay_ms: int = 10,
        batching_type: pulsar.BatchingType = pulsar.BatchingType.Default,
        send_timeout_ms: int = 30_000,
        operation_timeout_s: int = 30,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        if client is None and service_url is None:
            raise ValueError("give a service_url or a pulsar.Client")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.service_url = service_url
        self.topic = topic
        self.max_in_flight = max_in_flight
        self._client = client
        self._owns_client = client is None
        self._producer_args: dict[str, Any] = {
            "batching_enabled": True,
            "batching_max_messages": batching_max_messages,
            "batching_max_publish_delay_ms": batching_max_publish_delay_ms,
            "batching_type": batching_type,
            "send_timeout_millis": send_timeout_ms,
            # Our own bound stays below the client's queue, so send_async never blocks the caller.
            "max_pending_messages": max_in_flight + 1000,
            "max_pending_messages_across_partitions": max_in_flight + 1000,
            "block_if_queue_full": True,
        }
        self._operation_timeout_s = operation_timeout_s
        self._client_options = dict(client_options or {})
        self._producer: pulsar.Producer | None = None
        self._cond = threading.Condition()
        self._in_flight = 0
        self._waiters = 0  # threads blocked in _acquire or flush_sync
        self._errors: list[str] = []
        self.submitted = 0
        self.published = 0
        self.failed = 0

    # -------------------------------------------------------------- lifecycle

    def start_sync(self) -> None:
        """Connect and create the producer (blocking).

        Raises:
            PublishFailed: Pulsar cannot be reached or refuses the producer; the message says where.
        """
        if self._producer is not None:
            return
        try:
            if self._client is None:
                self._client = pulsar.Client(self.service_url, operation_timeout_seconds=self._operation_timeout_s,
                                             logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn),
                                             **self._client_options)
            self._producer = self._client.create_producer(self.topic, **self._producer_args)
        except Exception as exc:  # pulsar raises its own exception types, not exported stably
            self._close_client()
            raise PublishFailed(f"cannot create a Pulsar producer on {self.topic} at {self.service_url}: {exc}; "
                                "check that Pulsar is up (deploy/local/stack status)") from exc

    def stop_sync(self) -> None:
        """Flush what is buffered, close the producer, and close the client if this publisher owns it.

        Does not raise for failed sends (call :meth:`flush_sync` first to know).
        """
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.flush()
                producer.close()
            except Exception as exc:  # closing is best effort
                log.warning("closing the Pulsar producer failed: %s", type(exc).__name__)
        self._close_client()

    def _close_client(self) -> None:
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            client.close()

    async def start(self) -> None:
        """Async :meth:`start_sync` (runs in a worker thread)."""
        await asyncio.to_thread(self.start_sync)

    async def stop(self) -> None:
        """Async :meth:`stop_sync` (runs in a worker thread)."""
        await asyncio.to_thread(self.stop_sync)

    def __enter__(self) -> Self:
        self.start_sync()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_sync()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    # -------------------------------------------------------------- in-flight accounting

    @property
    def in_flight(self) -> int:
        """Sends submitted and not yet acknowledged (or failed)."""
        return self._in_flight

    def _try_acquire(self) -> bool:
        with self._cond:
            if self._in_flight < self.max_in_flight:
                self._in_flight += 1
                return True
            return False

    def _acquire(self) -> None:
        with self._cond:
            self._waiters += 1
            try:
                while self._in_flight >= self.max_in_flight:
                    self._cond.wait()
            finally:
                self._waiters -= 1
            self._in_flight += 1

    def _on_ack(self, result: pulsar.Result, _msg_id: Any) -> None:
        """pulsar-client's send callback (runs on its I/O thread)."""
        with self._cond:
            self._in_flight -= 1
            if result == pulsar.Result.Ok:
                self.published += 1
            else:
                self._failed(str(result))
            if self._waiters:  # only a blocked publish or a flush waits; skip the notify otherwise
                self._cond.notify_all()

    def _failed(self, error: str) -> None:
        # Called with self._cond held.
        self.failed += 1
        if len(self._errors) < _MAX_ERRORS_KEPT:
            self._errors.append(error)

    def _release(self, error: str | None) -> None:
        """Give back the slot of a send that never reached the client; count it failed if ``error``."""
        with self._cond:
            self._in_flight -= 1
            if error is not None:
                self._failed(error)
            if self._waiters:
                self._cond.notify_all()

    def _ack_then(self, on_done: Callable[[bool, str | None], None]) -> Callable[[pulsar.Result, Any], None]:
        def callback(result: pulsar.Result, msg_id: Any) -> None:
            self._on_ack(result, msg_id)
            ok = result == pulsar.Result.Ok
            on_done(ok, None if ok else str(result))

        return callback

    def _submit(self, event: KeyEvent, on_done: Callable[[bool, str | None], None] | None = None) -> None:
        """Send one event; a slot must be held (it is given back on failure). Called from any thread."""
        producer = self._producer
        if producer is None:
            self._release(None)
            raise PublishFailed("EventPublisher is not started: call start() or use a with block")
        callback = self._on_ack if on_done is None else self._ack_then(on_done)
        try:
            producer.send_async(encode_event(event), callback, partition_key=event.key,
                                event_timestamp=event.occurred_at_ms)
        except Exception as exc:
            self._release(type(exc).__name__)
            raise PublishFailed(f"Pulsar refused a send on {self.topic}: {type(exc).__name__}") from exc
        self.submitted += 1

    # -------------------------------------------------------------- publishing (sync)

    def publish_sync(self, event: KeyEvent) -> None:
        """Send one event without waiting for its ack; blocks while ``max_in_flight`` are pending.

        Raises:
            PublishFailed: not started, or the client refused the message at once.
        """
        self._acquire()
        self._submit(event)

    def flush_sync(self, timeout_s: float | None = None) -> None:
        """Wait until every send so far is acknowledged or failed, then report failures.

        Args:
            timeout_s: longest wait for the acks, seconds; no limit when None (each send fails
                after ``send_timeout_ms`` anyway).

        Raises:
            PublishFailed: a send failed since the last flush (the count and first errors are in
                the message; failures are reset), or the acks did not arrive within ``timeout_s``.
        """
        producer = self._producer
        if producer is not None:
            try:
                producer.flush()
            except Exception as exc:  # the failed sends also reach their callbacks
                log.warning("Pulsar flush reported %s", type(exc).__name__)
        with self._cond:
            self._waiters += 1
            try:
                drained = self._cond.wait_for(lambda: self._in_flight == 0, timeout=timeout_s)
            finally:
                self._waiters -= 1
            if not drained:
                raise PublishFailed(f"{self._in_flight} sends still unacknowledged after {timeout_s} s")
            errors, failed = self._errors, self.failed
            self._errors, self.failed = [], 0
        if failed:
            raise PublishFailed(f"{failed} sends to {self.topic} failed ({', '.join(errors)}); "
                                "publish them again once Pulsar is healthy")

    # -------------------------------------------------------------- publishing (asyncio)

    async def publish(self, event: KeyEvent) -> None:
        """Send one event without waiting for its ack; waits (off the loop) while too many are pending.

        Raises:
            PublishFailed: as :meth:`publish_sync`.
        """
        if not self._try_acquire():
            await asyncio.to_thread(self._acquire)
        self._submit(event)

    async def publish_many(self, events: Iterable[KeyEvent]) -> int:
        """Send events in order without waiting for acks (see :meth:`publish`).

        Returns:
            How many events were submitted.

        Raises:
            PublishFailed: as :meth:`publish_sync`.
        """
        count = 0
        for event in events:
            if not self._try_acquire():
                await asyncio.to_thread(self._acquire)
            self._submit(event)
            count += 1
            if count % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
        return count

    async def send(self, event: KeyEvent) -> None:
        """Send one event and wait for Pulsar's acknowledgement of it.

        Raises:
            PublishFailed: the send failed (it is also counted for the next :meth:`flush`).
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str | None] = loop.create_future()

        def on_done(ok: bool, error: str | None) -> None:
            loop.call_soon_threadsafe(_resolve, done, None if ok else (error or "unknown"))

        if not self._try_acquire():
            await asyncio.to_thread(self._acquire)
        self._submit(event, on_done)
        error = await done
        if error is not None:
            raise PublishFailed(f"a send to {self.topic} failed: {error}")

    async def flush(self, timeout_s: float | None = None) -> None:
        """Async :meth:`flush_sync` (waits in a worker thread).

        Raises:
            PublishFailed: as :meth:`flush_sync`.
        """
        await asyncio.to_thread(self.flush_sync, timeout_s)


def _resolve(future: asyncio.Future[str | None], error: str | None) -> None:
    if not future.done():
        future.set_result(error)
