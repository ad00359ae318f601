"""Dead-letter records: a rejected event's original bytes with its reason, never lost (DESIGN 5)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import orjson

from vsync_stream.errors import InvalidEvent
from vsync_stream.metrics import DEAD_LETTERS


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
