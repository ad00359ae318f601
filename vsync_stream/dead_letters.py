"""Dead-letter records: a rejected event's original bytes with its reason, never lost (DESIGN 5)."""

from __future__ import annotations

import base64
import logging
import re
from datetime import UTC, datetime
from typing import Any

import orjson

from vsync_stream.errors import InvalidEvent
from vsync_stream.metrics import DEAD_LETTERS

log = logging.getLogger(__name__)

_UUID = re.compile(rb'"eventId"\s*:\s*"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"')


def dead_letter_record(payload: bytes, error: InvalidEvent, *, stage: str, source: dict[str, Any]) -> bytes:
    """Build the dead-letter value for a rejected message and count it.

    Args:
        payload: the original message bytes, kept whole (base64 in the record).
        error: why it was rejected.
        stage: where it was rejected: ``adapter`` (from Pulsar) or ``fold`` (from Kafka).
        source: where it came from (topic, message id or partition/offset).

    Returns:
        JSON bytes: ``{"reason", "detail", "stage", "source", "rejectedAt", "payloadBase64"}``.
    """
    DEAD_LETTERS.labels(stage=stage, reason=error.code).inc()
    # Only the event id, and only when it is a UUID: the payload may hold anything, personal data included.
    found = _UUID.search(payload[:4096])
    event_id = found.group(1).decode("ascii").lower() if found else None
    log.warning("event dead-lettered at %s: %s (%s)", stage, error.code, error.reason,
                extra={"event_id": event_id, "reason": error.code, "stage": stage})
    return orjson.dumps(
        {
            "reason": error.code,
            "detail": error.reason,
            "stage": stage,
            "source": source,
            "rejectedAt": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "payloadBase64": base64.b64encode(payload).decode("ascii"),
        }
    )


def decode_dead_letter(value: bytes) -> tuple[dict[str, Any], bytes]:
    """Split a dead-letter record into its metadata and the original payload bytes."""
    doc: dict[str, Any] = orjson.loads(value)
    return doc, base64.b64decode(doc["payloadBase64"])
