"""Client-side pacing with the DICT's token buckets, so a well-behaved client is never rate limited.

BCB DICT API, "Limitação de requisições" (DESIGN 2.6): every DICT operation has a token bucket per
participant, e.g. sync verification refills 10 tokens per minute into a bucket of 50, and a call
that finds the bucket empty is refused (RESOURCE_EXHAUSTED). The client keeps a bucket of the same
shape per operation and takes a token before each call attempt, waiting asynchronously when it is
empty, so the DICT's bucket is never found empty by this client.

The buckets are this module's own :class:`TokenBucket` (a few lines; no private fields of a
library are read). Their levels can be shared through the audit store by every worker of the app
id (:meth:`Pacer.share`): the DICT's buckets do not refill because a worker restarted or the
coordinator moved, so the client's must not start full then either (issue #14, item 7).

Why a reserve: the DICT takes the token when the request *arrives*, the client when it *leaves*.
If an earlier request is delayed more than a later one (connection set-up, network jitter), the two
arrive closer together than they left and a bucket paced to the last token refuses the second. Keeping
``r`` tokens in reserve tolerates ``r / refill`` seconds of such spread, so the client reserves
enough tokens for ``margin_s`` seconds (at least one; never its whole bucket).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import time
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from vsync_stream.metrics import BRIDGE_PACING_WAIT, BRIDGE_TOKENS

__all__ = ["DICT_RATE_LIMITS", "Pacer", "RateLimit", "TokenBucket", "parse_rate_limits", "reserve_tokens"]

log = logging.getLogger(__name__)

_PERIODS_S = {"s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0, "hour": 3600.0, "day": 86_400.0}
_LIMIT_RE = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*/\s*(?P<unit>[a-z]+)\s*:\s*(?P<capacity>\d+)\s*$")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """The shape of a token bucket: ``capacity`` tokens, refilled at ``refill_per_s`` tokens/second.

    A bucket starts full, as the DICT's do.

    Raises:
        ValueError: a capacity below 1 or a refill rate that is not positive.
    """

    capacity: float
    refill_per_s: float

    def __post_init__(self) -> None:
        if not self.capacity >= 1 or not self.refill_per_s > 0:
            raise ValueError("a rate limit needs capacity >= 1 and a positive refill rate")

    @classmethod
    def per_minute(cls, per_minute: float, capacity: float) -> RateLimit:
        """A bucket refilled at ``per_minute`` tokens per minute, as the DICT states its limits."""
        return cls(capacity, per_minute / 60.0)

    @classmethod
    def per_day(cls, per_day: float, capacity: float) -> RateLimit:
        """A bucket refilled at ``per_day`` tokens per day."""
        return cls(capacity, per_day / 86_400.0)

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """Read ``"<refill>/<unit>:<capacity>"``, e.g. ``"10/min:50"``; units s, min, h, day.

        Raises:
            ValueError: the text is not in that form.
        """
        match = _LIMIT_RE.match(text.lower())
        if match is None or match["unit"] not in _PERIODS_S:
            raise ValueError(f"a rate limit reads like '10/min:50' (units s, min, h, day), got {text!r}")
        return cls(float(match["capacity"]), float(match["n"]) / _PERIODS_S[match["unit"]])


# BCB DICT API, "Limitação de requisições", per participant (DESIGN 2.6). The simulator builds its
# buckets from the same table, so the two sides cannot drift apart.
DICT_RATE_LIMITS: Mapping[str, RateLimit] = MappingProxyType({
    "VerifySync": RateLimit.per_minute(10, 50),
    "CreateCidFile": RateLimit.per_day(40, 200),
    "GetCidFile": RateLimit.per_minute(10, 50),
    "ListCidEvents": RateLimit.per_minute(20, 100),
    "GetEntryByCid": RateLimit.per_minute(1200, 36_000),
})


def parse_rate_limits(spec: str) -> dict[str, RateLimit | None]:
    """Read per-operation overrides, e.g. ``"VerifySync=6000/min:1000, GetEntryByCid=off"``.

    Args:
        spec: comma-separated ``<RPC name>=<limit>`` items; ``off`` turns pacing off for that RPC.
            Empty text gives no overrides.

    Returns:
        A mapping to pass as ``rate_limits`` to the client (merged over :data:`DICT_RATE_LIMITS`).

    Raises:
        ValueError: an item is malformed or names an operation the DICT does not limit.
    """
    limits: dict[str, RateLimit | None] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in DICT_RATE_LIMITS:
            raise ValueError(f"expected <operation>=<limit> with an operation among {sorted(DICT_RATE_LIMITS)}, "
                             f"got {item!r}")
        limits[name] = None if value.strip().lower() == "off" else RateLimit.parse(value)
    return limits


def reserve_tokens(limit: RateLimit, margin_s: float) -> int:
    """Tokens the client leaves unused to absorb ``margin_s`` seconds of arrival-time spread.

    Args:
        limit: the bucket's shape.
        margin_s: tolerated spread between the one-way delays of two calls, seconds (>= 0).

    Returns:
        ``ceil(margin_s * refill)``, at least 1 when ``margin_s > 0``, at most ``capacity - 1``
        (a bucket of capacity 1 gets no reserve: it then tolerates no spread).
    """
    if margin_s <= 0:
        return 0
    wanted = max(1, math.ceil(margin_s * limit.refill_per_s - 1e-9))
    return max(0, min(wanted, math.ceil(limit.capacity) - 1))


class TokenBucket:
    """A token bucket: ``capacity`` tokens, refilled continuously at ``refill_per_s`` tokens/second.

    Starts full unless ``tokens`` is given. The level may go below zero when it is set from a shared
    store where other workers took tokens (a debt the refill pays back first). Waiters are served
    one at a time, in arrival order.

    Args:
        capacity: the most tokens the bucket holds (> 0).
        refill_per_s: tokens added per second (> 0).
        tokens: the starting level; ``capacity`` when None.
        clock: monotonic clock, seconds (``time.monotonic``; the event loop uses the same clock).
    """

    def __init__(self, capacity: float, refill_per_s: float, tokens: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not capacity > 0 or not refill_per_s > 0:
            raise ValueError("a token bucket needs a positive capacity and refill rate")
        self.capacity, self.refill_per_s = float(capacity), float(refill_per_s)
        self._clock = clock
        self._tokens = self.capacity if tokens is None else min(self.capacity, float(tokens))
        self._at = clock()
        self._lock: asyncio.Lock | None = None

    def level(self) -> float:
        """Tokens in the bucket now (may be negative after :meth:`set_level`); reading changes nothing."""
        return min(self.capacity, self._tokens + (self._clock() - self._at) * self.refill_per_s)

    def set_level(self, tokens: float) -> None:
        """Set the level now (e.g. to the shared level read from the audit store)."""
        self._tokens, self._at = min(self.capacity, float(tokens)), self._clock()

    def seconds_until(self, tokens: float = 1.0) -> float:
        """Seconds until ``tokens`` are in the bucket (0.0 when they are there now)."""
        return max(0.0, (tokens - self.level()) / self.refill_per_s)

    @property
    def contended(self) -> bool:
        """True while callers wait in :meth:`take` (a new caller queues behind them)."""
        return self._lock is not None and self._lock.locked()

    def try_take(self) -> float:
        """Take one token if there is one; return 0.0, else the seconds until there is one (nothing taken)."""
        level = self.level()
        if level >= 1.0:
            self._tokens, self._at = level - 1.0, self._clock()
            return 0.0
        return (1.0 - level) / self.refill_per_s

    async def take(self) -> None:
        """Take one token, waiting (asynchronously, first come first served) until there is one."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            while (wait := self.try_take()) > 0:
                await asyncio.sleep(wait)


# Reads the shared levels and subtracts what this worker took since the last call: operation ->
# (capacity, refill per second, tokens taken) in, operation -> level now out.
BudgetSync = Callable[[dict[str, tuple[float, float, float]]], Awaitable[dict[str, float]]]


class Pacer:
    """One client-side token bucket per operation; :meth:`acquire` waits for a token.

    Args:
        limits: bucket shape per RPC name; an operation that is absent or maps to None is not paced.
        margin_s: see :func:`reserve_tokens`, seconds.

    Attributes:
        waits: per operation, the calls that had to wait for a token.
        waited_s: per operation, the total time spent waiting, seconds.
    """

    def __init__(self, limits: Mapping[str, RateLimit | None], *, margin_s: float = 1.0) -> None:
        self.limits = {op: limit for op, limit in limits.items() if limit is not None}
        self.margin_s = margin_s
        self._buckets: dict[str, TokenBucket] = {}
        for op, limit in self.limits.items():
            usable = math.floor(limit.capacity) - reserve_tokens(limit, margin_s)
            self._buckets[op] = TokenBucket(usable, limit.refill_per_s)
        self._taken: Counter[str] = Counter()
        self._sync: BudgetSync | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self.waits: Counter[str] = Counter()
        self.waited_s: dict[str, float] = {}
        ref = weakref.ref(self)  # the gauge reads the newest Pacer at scrape time, without keeping it alive
        for op in self._buckets:
            BRIDGE_TOKENS.labels(method=op).set_function(functools.partial(_tokens_left, ref, op))
        for op in set(limits) - set(self._buckets):  # pacing turned off: no bucket to report
            try:
                BRIDGE_TOKENS.remove(op)
            except KeyError:
                pass

    def tokens_left(self, operation: str) -> float:
        """Tokens the client may still take from ``operation``'s bucket now (reserve excluded).

        Returns:
            Between 0 and the usable capacity; ``inf`` when the operation is not paced.
        """
        bucket = self._buckets.get(operation)
        return math.inf if bucket is None else max(0.0, bucket.level())

    def seconds_until_token(self, operation: str) -> float:
        """Seconds until ``operation``'s bucket holds a token (0.0 now, or when not paced)."""
        bucket = self._buckets.get(operation)
        return 0.0 if bucket is None else bucket.seconds_until(1.0)

    async def share(self, sync: BudgetSync, interval_s: float = 1.0) -> None:
        """Share the bucket levels with the other workers of the app id, through ``sync``.

        Loads the shared levels now (so a restarted worker does not start with full buckets), then
        keeps them in step every ``interval_s`` seconds in the background: each sync hands over the
        tokens this worker took and sets every bucket to the shared level.

        Raises:
            Whatever ``sync`` raises on the first load (the worker then cannot pace safely).
        """
        self._sync = sync
        await self.sync_now()
        self._sync_task = asyncio.ensure_future(self._sync_loop(interval_s))

    async def sync_now(self) -> None:
        """One exchange with the shared store (no-op when not shared)."""
        if self._sync is None:
            return
        taken, self._taken = self._taken, Counter()
        shapes = {op: (b.capacity, b.refill_per_s, float(taken[op])) for op, b in self._buckets.items()}
        try:
            levels = await self._sync(shapes)
        except BaseException:
            self._taken.update(taken)  # hand them over next time
            raise
        for op, level in levels.items():
            bucket = self._buckets.get(op)
            if bucket is not None:
                bucket.set_level(level - self._taken[op])  # tokens taken while the exchange ran

    async def _sync_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sync_now()
            except Exception as exc:  # the store may be restarting: keep pacing on the local levels
                log.warning("could not share the DICT budget levels (%s: %s); pacing on local levels",
                            type(exc).__name__, exc)

    async def close(self) -> None:
        """Hand the last tokens taken to the store and stop sharing."""
        if self._sync_task is not None:
            self._sync_task.cancel()
            self._sync_task = None
            try:
                await self.sync_now()
            except Exception as exc:
                log.warning("could not store the DICT budget levels at stop: %s", exc)

    async def acquire(self, operation: str) -> float:
        """Take one token of ``operation``'s bucket, waiting (asynchronously) until there is one.

        Returns:
            Seconds waited (0.0 when a token was there, or the operation is not paced).
        """
        bucket = self._buckets.get(operation)
        if bucket is None:
            return 0.0
        if not bucket.contended and bucket.try_take() == 0.0:
            self._taken[operation] += 1
            return 0.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        log.debug("Bridge %s paced: waiting for a token of the DICT's bucket", operation)
        await bucket.take()
        self._taken[operation] += 1
        waited = loop.time() - started
        BRIDGE_PACING_WAIT.labels(method=operation).inc(waited)
        self.waits[operation] += 1
        self.waited_s[operation] = self.waited_s.get(operation, 0.0) + waited
        if waited >= 1.0:
            log.info("Bridge %s paced by the DICT's rate limit: waited %.1f s for a token", operation, waited)
        return waited


def _tokens_left(ref: weakref.ref[Pacer], operation: str) -> float:
    """What the tokens gauge reads at scrape time: NaN once the Pacer is gone."""
    pacer = ref()
    return pacer.tokens_left(operation) if pacer is not None else math.nan
