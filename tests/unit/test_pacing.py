"""Client-side pacing: the DICT's bucket shapes, the reserve, and that paced calls conform to the DICT's buckets."""

from __future__ import annotations

import asyncio
import math

import pytest

from vsync_stream.bridges.pacing import DICT_RATE_LIMITS, Pacer, RateLimit, parse_rate_limits, reserve_tokens
from vsync_stream.simulator.server import TokenBucket, dict_rate_limits


def test_the_dict_limits_are_the_published_ones() -> None:
    published = {  # DESIGN 2.6: (refill, refill period in seconds, bucket)
        "VerifySync": (10, 60, 50),
        "CreateCidFile": (40, 86_400, 200),
        "GetCidFile": (10, 60, 50),
        "ListCidEvents": (20, 60, 100),
        "GetEntryByCid": (1200, 60, 36_000),
    }
    assert set(DICT_RATE_LIMITS) == set(published)
    for op, (refill, period_s, capacity) in published.items():
        assert DICT_RATE_LIMITS[op].capacity == capacity
        assert DICT_RATE_LIMITS[op].refill_per_s * period_s == pytest.approx(refill)


def test_the_simulator_enforces_the_same_shapes() -> None:
    buckets = dict_rate_limits()
    assert {op: (b.capacity, b.refill_per_s) for op, b in buckets.items()} == {
        op: (limit.capacity, limit.refill_per_s) for op, limit in DICT_RATE_LIMITS.items()}
    assert all(b.tokens == b.capacity for b in buckets.values()), "buckets start full"


def test_rate_limit_constructors_and_parsing() -> None:
    assert RateLimit.per_minute(10, 50) == RateLimit(50, 10 / 60)
    assert RateLimit.per_day(40, 200) == RateLimit(200, 40 / 86_400)
    assert RateLimit.parse("10/min:50") == RateLimit.per_minute(10, 50)
    assert RateLimit.parse(" 40 / DAY : 200 ") == RateLimit.per_day(40, 200)
    assert RateLimit.parse("2.5/s:5") == RateLimit(5, 2.5)
    for bad in ("10/min", "10/week:5", "ten/min:5", "10/min:0", "0/min:5"):
        with pytest.raises(ValueError):
            RateLimit.parse(bad)
    with pytest.raises(ValueError):
        RateLimit(0.5, 1.0)


def test_parse_rate_limits() -> None:
    assert parse_rate_limits("") == {}
    assert parse_rate_limits("VerifySync=6000/min:1000, GetEntryByCid=off") == {
        "VerifySync": RateLimit.per_minute(6000, 1000), "GetEntryByCid": None}
    for bad in ("VerifySync", "Nope=1/s:1", "VerifySync=fast"):
        with pytest.raises(ValueError):
            parse_rate_limits(bad)


@pytest.mark.parametrize(("limit", "margin_s", "reserve"), [
    (RateLimit.per_minute(10, 50), 1.0, 1),  # one token is 6 s of tolerance
    (RateLimit.per_minute(1200, 36_000), 1.0, 20),  # 20 tokens per second
    (RateLimit.per_day(40, 200), 1.0, 1),
    (RateLimit(5, 20.0), 0.05, 1),
    (RateLimit(5, 20.0), 1.0, 4),  # never the whole bucket
    (RateLimit(1, 20.0), 1.0, 0),  # nothing to spare
    (RateLimit.per_minute(10, 50), 0.0, 0),
])
def test_reserve_tokens(limit: RateLimit, margin_s: float, reserve: int) -> None:
    assert reserve_tokens(limit, margin_s) == reserve
    if reserve:
        assert reserve / limit.refill_per_s >= margin_s or reserve == math.ceil(limit.capacity) - 1


@pytest.mark.asyncio
async def test_pacer_lets_a_burst_through_then_waits() -> None:
    pacer = Pacer({"Op": RateLimit(3, 200.0), "Free": None}, margin_s=0.0)
    assert [await pacer.acquire("Op") for _ in range(3)] == [0.0, 0.0, 0.0]  # starts full
    assert await pacer.acquire("Op") > 0
    assert pacer.waits["Op"] == 1 and pacer.waited_s["Op"] > 0
    assert [await pacer.acquire(op) for op in ("Free", "Unknown") for _ in range(10)] == [0.0] * 20
    assert pacer.waits["Free"] == pacer.waits["Unknown"] == 0


async def _acquisition_times(limit: RateLimit, margin_s: float, n: int) -> list[float]:
    pacer = Pacer({"Op": limit}, margin_s=margin_s)
    loop = asyncio.get_running_loop()
    times = []
    for _ in range(n):
        await pacer.acquire("Op")
        times.append(loop.time())
    return times


def _rejections_at_the_dict(limit: RateLimit, sent: list[float], delays: list[float]) -> int:
    """Replay calls sent at ``sent`` and delayed by ``delays`` against a DICT bucket of the same shape."""
    arrivals = sorted(t + d for t, d in zip(sent, delays, strict=True))
    now = [min(sent)]
    bucket = TokenBucket(limit.capacity, limit.refill_per_s, clock=lambda: now[0])
    rejected = 0
    for arrival in arrivals:
        now[0] = arrival
        rejected += not bucket.try_take()
    return rejected


@pytest.mark.asyncio
async def test_paced_calls_conform_to_the_dict_bucket_despite_uneven_delays() -> None:
    limit = RateLimit(10, 100.0)
    capacity = int(limit.capacity)
    spread = 0.5 / limit.refill_per_s  # the first burst arrives half a token later than the rest
    n = 3 * capacity

    exact = await _acquisition_times(limit, 0.0, n)  # no reserve: the bucket paced to the last token
    assert _rejections_at_the_dict(limit, exact, [spread] * capacity + [0.0] * (n - capacity)) > 0

    reserved = await _acquisition_times(limit, 2 * spread, n)  # reserve covers twice that spread
    usable = capacity - reserve_tokens(limit, 2 * spread)
    assert _rejections_at_the_dict(limit, reserved, [spread] * usable + [0.0] * (n - usable)) == 0
    assert _rejections_at_the_dict(limit, reserved, [0.0] * n) == 0


def test_own_token_bucket_refills_and_waits_in_order() -> None:
    from vsync_stream.bridges.pacing import TokenBucket

    now = [0.0]
    bucket = TokenBucket(3, 2.0, clock=lambda: now[0])
    assert bucket.level() == 3
    assert [bucket.try_take() for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]
    now[0] = 0.25
    assert bucket.level() == pytest.approx(0.5) and bucket.seconds_until() == pytest.approx(0.25)
    bucket.set_level(-1.0)  # other workers took more than this one saw: a debt
    assert bucket.seconds_until() == pytest.approx(1.0)
    now[0] = 100.0
    assert bucket.level() == 3  # never above capacity


async def test_shared_levels_are_loaded_so_a_restart_does_not_start_full() -> None:
    store: dict[str, float] = {}

    async def sync(shapes: dict[str, tuple[float, float, float]]) -> dict[str, float]:
        for op, (capacity, _refill, taken) in shapes.items():
            store[op] = store.get(op, capacity) - taken
        return dict(store)

    limits = {"CreateCidFile": RateLimit.per_day(40, 5)}
    first = Pacer(limits, margin_s=0)
    await first.share(sync, interval_s=3600)
    for _ in range(4):
        assert await first.acquire("CreateCidFile") == 0.0
    await first.close()
    assert store["CreateCidFile"] == 1
    restarted = Pacer(limits, margin_s=0)
    assert restarted.tokens_left("CreateCidFile") == 5  # alone it would start full...
    await restarted.share(sync, interval_s=3600)
    assert restarted.tokens_left("CreateCidFile") == pytest.approx(1, abs=0.01)  # ...shared, it does not
    assert restarted.seconds_until_token("CreateCidFile") == 0.0
    await restarted.acquire("CreateCidFile")
    assert restarted.seconds_until_token("CreateCidFile") > 1000  # the next file waits for the daily refill
    await restarted.close()
