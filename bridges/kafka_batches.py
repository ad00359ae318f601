"""Faust's Kafka consumer with a batch path: a topic's fetched records go to one handler per partition.

Faust delivers every record on its own: a ``Message``, two tasks raced in ``wait_first`` (the
handler against the flow-control event), the conductor, an ``Event`` on a channel queue and the
stream iterator — about 90 % of the fold's profile at ~5,000 events/s (BENCHMARKS.md). For a topic
registered here, :class:`BatchConsumer` instead hands each partition's records of a fetch, as
aiokafka returned them (``ConsumerRecord``, offset order), to the topic's handler in one call, and
acknowledges the offsets the handler says it consumed. Records of every other topic (the table
changelogs read by standbys and recovery) take Faust's own path, unchanged.

What Faust's path guarantees and this keeps:

* Nothing is handled while the consumer's flow is stopped (a rebalance) or after the group
  generation changed since the fetch: those records are dropped unread, as Faust drops them, and
  the partition is read again from where its owner resumes.
* A rebalance waits for the batch being handled (``wait_empty``) before the revoked partitions'
  stores close, and its commit includes the batch's offsets.
* Offsets are acknowledged through Faust's own bookkeeping (``_acked``, gaps, ``commit_every``),
  so Faust's commits, lag and shutdown work as for any agent.

Installed by :func:`install`; the handler of a topic is registered with :func:`register`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from time import monotonic
from typing import Any

from aiokafka.structs import ConsumerRecord
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaFaustConsumer
from faust.types import TP
from faust.types.tuples import ack_lock

# (partition, its records of one fetch, in offset order) -> how many of them, from the first, were
# consumed and may be acknowledged. Fewer than all: the handler moved the partition's position
# (seek), and the rest is read again from there.
BatchHandler = Callable[[TP, Sequence[ConsumerRecord]], Awaitable[int]]

_HANDLERS_ATTR = "vsync_batch_handlers"


def register(app: Any, topic: Any, handler: BatchHandler) -> None:
    """Subscribe ``app``'s consumer to ``topic`` and hand its records to ``handler`` in batches.

    Args:
        app: a Faust app whose transport was set up by :func:`install`.
        topic: a Faust topic (one topic name).
        handler: called once per partition per fetch; see :data:`BatchHandler`.

    Raises:
        ValueError: ``topic`` names several topics or a pattern.
    """
    names = topic.topics
    if topic.pattern or len(names) != 1:
        raise ValueError("a batch handler takes exactly one topic name")
    handlers: dict[str, BatchHandler] = getattr(app, _HANDLERS_ATTR)
    handlers[names[0]] = handler
    app.topics.add(topic)  # the consumer subscribes what the conductor lists; acks are enabled for it


def install(app: Any) -> None:
    """Make ``app``'s transport create a :class:`BatchConsumer` (call before the app starts)."""
    setattr(app, _HANDLERS_ATTR, {})
    app.transport.Consumer = BatchConsumer


class ReadCommittedConsumerThread(AIOKafkaConsumerThread):  # type: ignore[misc]
    """Faust's aiokafka consumer thread whose consumer reads committed records only.

    The table changelogs are written in transactions (``tables/fence.py``): a standby, and Faust's
    own recovery path, must not apply the records of a fenced writer's aborted transaction. Faust
    reads ``read_committed`` only with ``processing_guarantee="exactly_once"``, which would also
    route every commit through its transaction manager; here only the isolation level changes
    (the key-events topic is not transactional, so it reads the same either way).
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._isolation_level = "read_committed"  # aiokafka passes it to its Fetcher at start()
        return consumer


class BatchConsumer(AIOKafkaFaustConsumer):  # type: ignore[misc]
    """Faust's aiokafka consumer whose fetch loop hands registered topics' records over in batches."""

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handling = asyncio.Lock()  # held while a batch is handled and acknowledged

    async def wait_empty(self) -> None:
        """Wait for the batch being handled, then for Faust's own in-flight messages (rebalance, stop)."""
        async with self._handling:
            pass
        await super().wait_empty()

    async def _drain_messages(self, fetcher: Any) -> None:  # the consumer's fetch loop (Faust's Fetcher)
        handlers: dict[str, BatchHandler] = getattr(self.app, _HANDLERS_ATTR, {})
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(timeout=1.0)
                await self.sleep(0)  # a fetch never keeps the loop from other tasks
                if not records or self.should_stop:
                    continue
                if not self.flow_active:  # as Faust: records fetched around a rebalance are not delivered
                    await self._seek_after_stopped_flow()
                    continue
                generation = self.app.consumer_generation_id
                others: dict[TP, list[Any]] = {}
                for tp, batch in records.items():
                    if not batch or not (active is None or tp in active or tp in self._buffered_partitions):
                        continue
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    handler = handlers.get(tp.topic)
                    if handler is None:
                        others[tp] = batch
                    elif not await self._handle(tp, batch, handler, generation):
                        break
                else:
                    if others:
                        await self._deliver_each(others, generation)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _seek_after_stopped_flow(self) -> None:
        try:
            await self.perform_seek()
        except Exception as exc:
            self.log.warning("exception performing seek when flow not active %r", exc)

    def _current(self, generation: int) -> bool:
        return self.flow_active and self.app.consumer_generation_id == generation

    async def _handle(self, tp: TP, batch: Sequence[ConsumerRecord], handler: BatchHandler, generation: int) -> bool:
        """Hand one partition's records to its handler and acknowledge what it consumed.

        Returns False when the fetch is out of date (flow stopped or a new generation): the caller
        drops the rest of it.
        """
        await self.app.flow_control.acquire()  # blocks while a rebalance has the flow suspended
        if not self._current(generation):
            return False
        read = self._read_offset[tp]
        if read is not None:
            if batch[-1].offset < read:
                return True  # read already (Faust drops such records too)
            if batch[0].offset < read:
                batch = [record for record in batch if record.offset >= read]
            elif batch[0].offset - read > 1:  # offsets missing between fetches (compaction, markers)
                await self._add_gap(tp, read + 1, batch[0].offset)
        async with self._handling:
            if not self._current(generation):
                return False
            consumed = await handler(tp, batch)
            if consumed:
                self._ack_offsets(tp, [record.offset for record in batch[:consumed]])
                if consumed == len(batch):
                    self._read_offset[tp] = batch[-1].offset
                self.app.monitor.stream_inbound_time[tp] = monotonic()  # Faust's "stream is idle" check
        if self._commit_every is not None and self._n_acked >= self._commit_every:
            self._n_acked = 0
            await self.commit()
        return True

    def _ack_offsets(self, tp: TP, offsets: list[int]) -> None:
        """Faust's ``Consumer.ack`` for many offsets of one partition at once."""
        with ack_lock:
            committed = self._committed_offset[tp]
            index = self._acked_index[tp]
            fresh = [o for o in offsets if (committed is None or o >= committed) and o not in index]
            index.update(fresh)
            self._acked[tp].extend(fresh)
            self._n_acked += len(fresh)

    async def _deliver_each(self, records: dict[TP, list[Any]], generation: int) -> None:
        """Faust's own per-message path (``Consumer.getmany`` + ``_drain_messages``) for other topics."""
        to_message = self._to_message
        callback = self.callback
        for tp, record in self.scheduler.iterate(records):
            if not self._current(generation):
                return
            message = to_message(tp, record)
            read = self._read_offset[tp]
            if read is None or message.offset >= read:
                if read and message.offset - read > 1 and self.app.topics.acks_enabled_for(message.topic):
                    await self._add_gap(tp, read + 1, message.offset)
                if self._commit_every is not None and self._n_acked >= self._commit_every:
                    self._n_acked = 0
                    await self.commit()
                await self.wait_first(callback(message), self.suspend_flow.wait())
                self._read_offset[tp] = message.offset
