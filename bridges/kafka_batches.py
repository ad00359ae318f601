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

Every private part of Faust's consumer used here is reached through :mod:`.faust_seam`.

Installed by :func:`install`; the handler of a topic is registered with :func:`register`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from time import monotonic
from typing import Any

from aiokafka.structs import ConsumerRecord
from faust.types import TP

from vsync_stream.bridges import faust_seam

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


class BatchConsumer(faust_seam.Consumer):
    """Faust's aiokafka consumer whose fetch loop hands registered topics' records over in batches."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handling = asyncio.Lock()  # held while a batch is handled and acknowledged

    async def wait_empty(self) -> None:
        """Wait for the batch being handled, then for Faust's own in-flight messages (rebalance, stop)."""
        async with self.handling:
            pass
        await super().wait_empty()

    async def drain(self, fetcher_should_stop: Callable[[], bool]) -> None:  # the consumer's fetch loop
        handlers: dict[str, BatchHandler] = getattr(self.app, _HANDLERS_ATTR, {})
        fetching = self.fetching_flag
        try:
            while not (self.should_stop or fetcher_should_stop()):
                self.diag.set_flag(fetching)
                records, active = await self.wait_next_records(timeout=1.0)
                await self.sleep(0)  # a fetch never keeps the loop from other tasks
                if not records or self.should_stop:
                    continue
                if not self.flow_active:  # as Faust: records fetched around a rebalance are not delivered
                    await self.seek_after_stopped_flow()
                    continue
                generation = self.app.consumer_generation_id
                others: dict[TP, list[Any]] = {}
                for tp, batch in records.items():
                    if not batch or not (active is None or tp in active or self.buffered(tp)):
                        continue
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    handler = handlers.get(tp.topic)
                    if handler is None:
                        others[tp] = batch
                    elif not await self.handle(tp, batch, handler, generation):
                        break
                else:
                    if others:
                        await self.deliver_each(others, generation)
                self.diag.unset_flag(fetching)
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
            self.diag.unset_flag(fetching)

    async def seek_after_stopped_flow(self) -> None:
        """As Faust: seek back to the committed offsets when records arrive while the flow is stopped."""
        try:
            await self.perform_seek()
        except Exception as exc:
            self.log.warning("exception performing seek when flow not active %r", exc)

    def current(self, generation: int) -> bool:
        """True while the flow is active and the group generation is still ``generation``."""
        return self.flow_active and self.app.consumer_generation_id == generation

    async def handle(self, tp: TP, batch: Sequence[ConsumerRecord], handler: BatchHandler, generation: int) -> bool:
        """Hand one partition's records to its handler and acknowledge what it consumed.

        Returns False when the fetch is out of date (flow stopped or a new generation): the caller
        drops the rest of it.
        """
        await self.app.flow_control.acquire()  # blocks while a rebalance has the flow suspended
        if not self.current(generation):
            return False
        read = self.read_offset(tp)
        if read is not None:
            if batch[-1].offset < read:
                return True  # read already (Faust drops such records too)
            if batch[0].offset < read:
                batch = [record for record in batch if record.offset >= read]
            elif batch[0].offset - read > 1:  # offsets missing between fetches (compaction, markers)
                await self.add_gap(tp, read + 1, batch[0].offset)
        async with self.handling:
            if not self.current(generation):
                return False
            consumed = await handler(tp, batch)
            if consumed:
                self.ack_offsets(tp, [record.offset for record in batch[:consumed]])
                if consumed == len(batch):
                    self.set_read_offset(tp, batch[-1].offset)
                self.app.monitor.stream_inbound_time[tp] = monotonic()  # Faust's "stream is idle" check
        await self.commit_if_due()
        return True

    async def deliver_each(self, records: dict[TP, list[Any]], generation: int) -> None:
        """Faust's own per-message path (``Consumer.getmany`` + ``_drain_messages``) for other topics."""
        to_message = self.to_message
        callback = self.callback
        for tp, record in self.scheduler.iterate(records):
            if not self.current(generation):
                return
            message = to_message(tp, record)
            read = self.read_offset(tp)
            if read is None or message.offset >= read:
                if read and message.offset - read > 1 and self.app.topics.acks_enabled_for(message.topic):
                    await self.add_gap(tp, read + 1, message.offset)
                await self.commit_if_due()
                await self.wait_first(callback(message), self.suspend_flow.wait())
                self.set_read_offset(tp, message.offset)
