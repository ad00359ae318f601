"""The seam to mode-streaming's private parts (the service library under Faust).

Only the changelog queue of ``tables/restore.py`` needs one: whether the queue's flow control is
active when it is asked to clear. ``tests/unit/test_seams.py`` checks the installed mode still has
everything listed in :data:`CONTRACT` and that no other module names a private mode attribute.
Tested with :data:`TESTED_WITH` (pinned in ``pyproject.toml``).
"""

from __future__ import annotations

from typing import Any

from mode.utils.queues import FlowControlEvent, ThrowableQueue

__all__ = ["CONTRACT", "TESTED_WITH", "ThrowableQueue", "queue_flow_control"]

TESTED_WITH = "mode-streaming==0.7.1"

# (object, private attribute or method, its parameter names or None): see tests/unit/test_seams.py.
CONTRACT: list[tuple[Any, str, tuple[str, ...] | None]] = [
    (ThrowableQueue, "_flow_control", None),
    (FlowControlEvent, "is_active", ("self",)),
]


def queue_flow_control(queue: ThrowableQueue) -> FlowControlEvent:
    """The flow-control event a mode ``FlowControlQueue`` was created with."""
    flow: FlowControlEvent = queue._flow_control
    return flow
