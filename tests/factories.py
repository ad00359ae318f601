"""Builders of valid events for tests (pure: no brokers)."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

VALID_EVENT: dict[str, Any] = {
    "eventId": "3f1c2b1e-7d4e-4d8a-9a57-0c2f3e8b6a11",
    "action": "key.created",
    "occurredAt": "2026-11-29T03:00:00.123Z",
    "version": 17,
    "reason": "USER_REQUESTED",
    "entry": {
        "key": "+5511987654321",
        "keyType": "PHONE",
        "requestId": "01020304-0506-0708-090a-0b0c0d0e0f10",
        "account": {"participant": "12345678", "branch": "0001", "accountNumber": "0007654321",
                    "accountType": "CACC", "openingDate": "2010-01-10T03:00:00Z"},
        "owner": {"type": "NATURAL_PERSON", "taxIdNumber": "11122233300", "name": "João Silva",
                  "tradeName": None},
    },
}


def event_doc(**changes: Any) -> dict[str, Any]:
    """A valid event document; ``changes`` use dotted paths (``entry.account.branch=...``).

    A value of ``...`` (Ellipsis) removes the field.
    """
    doc = copy.deepcopy(VALID_EVENT)
    doc["eventId"] = str(uuid.uuid4())
    for path, value in changes.items():
        parts = path.split("__")
        target = doc
        for part in parts[:-1]:
            target = target[part]
        if value is ...:
            target.pop(parts[-1], None)
        else:
            target[parts[-1]] = value
    return doc


# BCB's published CID and VSync examples, copied from shared/vectors/official.json so the tests
# run from any clone.
OFFICIAL_VECTORS_PATH = Path(__file__).resolve().parent / "data" / "official.json"


def official_vectors() -> dict[str, Any]:
    """The official vectors: ``{"cid": [...], "vsync": [...]}``."""
    vectors: dict[str, Any] = json.loads(OFFICIAL_VECTORS_PATH.read_text("utf-8"))
    return vectors
