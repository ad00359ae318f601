"""Worker logs as text (default) or JSON lines, with correlation ids and no personal data.

``VSYNC_LOG_FORMAT=json`` makes every log record one JSON object per line::

    {"ts": "2026-11-29T03:00:00.123Z", "level": "INFO", "logger": "vsync_stream.verification",
     "msg": "verification round … (schedule): 10 pairs, 0 not OK []", "round_id": "…", "trigger": "schedule"}

Correlation ids come from :func:`log_context` (a context variable, so they follow the asyncio task
that set them and the tasks it starts: a reconciliation started by a NOK carries the round id of
that verification) and from ``extra={...}`` on a logging call. The ids used are ``round_id``
(verification round), ``reconciliation_id``, ``event_id`` (a key event, dead-lettered or
corrective), with ``participant`` (ISPB) and ``key_type`` where they apply.

What may be logged: ISPBs, key types, CIDs, VSyncs, event/round/reconciliation ids, counts, codes.
What must never be: Pix keys, tax ids, names, trade names, account numbers — the messages of the
product's loggers are written that way, and ``tests/integration/test_logs.py`` scans a worker's
JSON log for them.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["CorrelationFilter", "JsonFormatter", "current_context", "faust_logging_config", "log_context"]

# An immutable default (a tuple of pairs): a ContextVar's default is shared by every context.
_CONTEXT: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar("vsync_log_context",
                                                                                       default=())

# Attributes every LogRecord has; anything else on a record came from ``extra=`` or the context.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime",
                                                                                 "taskName"}


@contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Add correlation ids to every log record made inside the block (and tasks started from it).

    Args:
        ids: e.g. ``round_id="…"``, ``reconciliation_id="…"``; None values are left out.
    """
    merged = {**dict(_CONTEXT.get()), **{k: str(v) for k, v in ids.items() if v is not None}}
    token = _CONTEXT.set(tuple(merged.items()))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_context() -> dict[str, str]:
    """The correlation ids in force here (a copy)."""
    return dict(_CONTEXT.get())


class CorrelationFilter(logging.Filter):
    """Copy the correlation ids of :func:`log_context` onto each record (never overriding ``extra``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _CONTEXT.get():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ms), ``level``, ``logger``, ``msg``, the correlation
    ids and ``extra`` fields, and ``exc`` (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and value is not None:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str).decode("utf-8")


def faust_logging_config(log_format: str) -> dict[str, Any] | None:
    """The ``logging_config`` to give the Faust app for ``log_format``.

    Args:
        log_format: ``text`` (Faust's own format: None, nothing changes) or ``json``.

    Returns:
        A :func:`logging.config.dictConfig` that Faust merges over its default (``merge``), so the
        worker's ``-l/--loglevel`` still sets the level; its ``default`` handler writes JSON lines
        to stdout.
    """
    if log_format != "json":
        return None
    return {
        "version": 1,
        "merge": True,  # mode.utils.logging: keep Faust's root logger and level, replace the handler
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "filters": {"correlation": {"()": f"{__name__}.CorrelationFilter"}},
        "handlers": {"default": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout",
                                 "formatter": "json", "filters": ["correlation"]}},
    }
