"""The seam to aiolimiter's private parts: reading a leaky bucket's level without leaking it.

``bridges/pacing.py`` reports the tokens left in each DICT bucket at scrape time; aiolimiter has
no public reading of its level. ``tests/unit/test_seams.py`` checks the installed aiolimiter still
has everything listed in :data:`CONTRACT`. Tested with :data:`TESTED_WITH` (pinned in
``pyproject.toml``).
"""

from __future__ import annotations

import time
from typing import Any

from aiolimiter import AsyncLimiter

__all__ = ["CONTRACT", "TESTED_WITH", "AsyncLimiter", "level_now"]

TESTED_WITH = "aiolimiter==1.3.0"

# (object, private attribute or method, its parameter names or None): see tests/unit/test_seams.py.
CONTRACT: list[tuple[Any, str, tuple[str, ...] | None]] = [
    (AsyncLimiter, "_level", None),
    (AsyncLimiter, "_last_check", None),
    (AsyncLimiter, "_rate_per_sec", None),
    (AsyncLimiter, "_leak", ("self",)),
]


def level_now(limiter: AsyncLimiter) -> float:
    """The bucket's level now (tokens taken and not yet leaked), read without leaking.

    aiolimiter keeps the level and the time it last leaked on the loop's clock, which is
    ``time.monotonic()``; reading changes nothing, so a metrics scrape does not move the bucket.
    """
    elapsed = max(0.0, time.monotonic() - limiter._last_check)
    return max(0.0, limiter._level - elapsed * limiter._rate_per_sec)
