"""Dead-letter records: a rejected event's original bytes with its reason, never lost (DESIGN 5).

A payload is kept whole up to ``PAYLOAD_KEPT_BYTES`` (512 KiB). A larger one (Pulsar accepts up to
5 MB) would make the record exceed Kafka's default 1 MB limit and block the adapter on it forever,
so only its first 512 KiB are kept, with its size and SHA-256: the record still says what arrived.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from datetime import UTC, datetime
from typing import Any

import orjson

from vsync_stream.errors import InvalidEvent
from vsync_stream.metrics import DEAD_LETTERS

log = logging.getLogger(__name__)

PAYLOAD_KEPT_BYTES = 512 * 1024

_UUID = re.compile(rb'"eventId"\s*:\s*"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"')


def dead_letter_record(payload: bytes, error: InvalidEvent, *, stage: str, source: dict[str, Any]) -> bytes:
    """Build the dead-letter value for a rejected message and count it.

    Args:
        payload: the original message bytes, kept whole (base64 in the record) up to
            ``PAYLOAD_KEPT_BYTES``; beyond that their first ``PAYLOAD_KEPT_BYTES``.
        error: why it was rejected.
        stage: where it was rejected: ``adapter`` (from Pulsar) or ``fold`` (from Kafka).
        source: where it came from (topic, message id or partition/offset).

    Returns:
        JSON bytes: ``{"reason", "detail", "stage", "source", "rejectedAt", "payloadBase64"}``, plus
        ``"payloadTruncated": true, "payloadBytes", "payloadSha256"`` when the payload was cut.
    """
    DEAD_LETTERS.labels(stage=stage, reason=error.code).inc()
    # Only the event id, and only when it is a UUID: the payload may hold anything, personal data included.
    found = _UUID.search(payload[:4096])
    event_id = found.group(1).decode("ascii").lower() if found else None
    log.warning("event dead-lettered at %s: %s (%s)", stage, error.code, error.reason,
                extra={"event_id": event_id, "reason": error.code, "stage": stage})
    doc: dict[str, Any] = {
        "reason": error.code,
        "detail": error.reason,
        "stage": stage,
        "source": source,
        "rejectedAt": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "payloadBase64": base64.b64encode(payload[:PAYLOAD_KEPT_BYTES]).decode("ascii"),
    }
    if len(payload) > PAYLOAD_KEPT_BYTES:
        doc.update(payloadTruncated=True, payloadBytes=len(payload), payloadSha256=hashlib.sha256(payload).hexdigest())
    return orjson.dumps(doc)


def decode_dead_letter(value: bytes) -> tuple[dict[str, Any], bytes]:
    """Split a dead-letter record into its metadata and the original payload bytes."""
    doc: dict[str, Any] = orjson.loads(value)
    return doc, base64.b64decode(doc["payloadBase64"])
