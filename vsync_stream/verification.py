"""A verification round: send every (participant, key type) VSync to the DICT and record the answers.

BCB DICT API, "Verificação de sincronismo": at least every 36 hours the participant sends, per key
type, the VSync of its entries and the DICT answers OK or NOK. One round covers every configured
participant (the direct participant and its indirect ones) × the five key types, from one
consistent cut of the table (invariant I4: the offsets it reflects are recorded with it).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from vsync_stream.bridges.audit_store import VerificationRecord
from vsync_stream.cluster import ClusterSnapshot
from vsync_stream.domain.vsync import vsync_hex
from vsync_stream.errors import BridgeError
from vsync_stream.logging_setup import log_context
from vsync_stream.metrics import LAST_OK, VERIFICATION_SECONDS, VERIFICATIONS, record_last_result

log = logging.getLogger(__name__)


class VerifyAnswer(Protocol):
    """The DICT's answer as a round reads it (``bridge_proto.VerifyResult`` is one; read-only)."""

    @property
    def result(self) -> str: ...
    @property
    def verification_id(self) -> str: ...


class SyncVerifier(Protocol):
    """The Bridge operation a round needs (``BridgeClient`` implements it)."""

    async def verify_sync(self, participant: str, key_type: str, vsync: str) -> VerifyAnswer: ...


class VerificationLog(Protocol):
    """Where rounds are recorded (``AuditStore`` implements it)."""

    async def record_verifications(self, records: list[VerificationRecord]) -> None: ...


class Verifier:
    """Runs verification rounds, one at a time.

    Args:
        snapshot: returns the consistent cut of every partition to verify (``Cluster.snapshot``);
            raises ``StateNotReady`` while a partition is recovering or the assignment is changing.
        bridge: the Bridge client.
        audit: the audit store.
        participants: ISPBs to verify.
        key_types: key types to verify (all five by default).
        on_not_ok: called with each NOK record after a round (e.g. to start a reconciliation).
    """

    def __init__(self, snapshot: Callable[[], Awaitable[ClusterSnapshot]], bridge: SyncVerifier, audit: VerificationLog,
                 participants: Sequence[str], key_types: Sequence[str],
                 on_not_ok: Callable[[VerificationRecord], None] | None = None) -> None:
        self._snapshot = snapshot
        self._bridge = bridge
        self._audit = audit
        self.participants = list(participants)
        self.key_types = list(key_types)
        self._lock = asyncio.Lock()
        self._on_not_ok = on_not_ok

    async def run(self, trigger: str, pairs: Sequence[tuple[str, str]] | None = None) -> list[VerificationRecord]:
        """Verify every (participant, key type) once — or only ``pairs`` — and store the results.

        Args:
            trigger: why the round runs (``schedule``, ``web``, ``reconciliation``…), stored with it.
            pairs: the (participant, key type) pairs to verify; all configured pairs when None.

        Returns:
            One record per pair; a Bridge failure for a pair is recorded as result ``ERROR``.

        Raises:
            StateNotReady: a partition is recovering, unreachable or moving; nothing was sent to the DICT.
        """
        async with self._lock:
            started = time.perf_counter()
            cut = await self._snapshot()
            round_id = str(uuid.uuid4())
            if pairs is None:
                pairs = [(p, t) for p in self.participants for t in self.key_types]
            with log_context(round_id=round_id, trigger=trigger):
                records = [await self._verify_pair(round_id, cut, p, t, trigger) for p, t in pairs]
                await self._audit.record_verifications(records)
                VERIFICATION_SECONDS.observe(time.perf_counter() - started)
                nok = [f"{r.participant}/{r.key_type}" for r in records if r.result != "OK"]
                if self._on_not_ok is not None:
                    for record in records:
                        if record.result == "NOK":
                            self._on_not_ok(record)  # a reconciliation started here carries the round id
                log.info("verification round %s (%s): %d pairs, %d not OK %s", round_id, trigger, len(records),
                         len(nok), nok)
            return records

    async def _verify_pair(self, round_id: str, cut: ClusterSnapshot, participant: str, key_type: str,
                           trigger: str) -> VerificationRecord:
        vsync = vsync_hex(cut.ledger.vsync(participant, key_type))
        started_at = datetime.now(UTC)
        verification_id: str | None = None
        error: str | None = None
        try:
            answer = await self._bridge.verify_sync(participant, key_type, vsync)
            result, verification_id = answer.result, answer.verification_id
        except BridgeError as exc:
            result, error = "ERROR", f"{type(exc).__name__}: {exc}"
            log.warning("verification of %s/%s failed: %s", participant, key_type, error)
        VERIFICATIONS.labels(participant=participant, key_type=key_type, result=result).inc()
        if result == "OK":
            LAST_OK.labels(participant=participant, key_type=key_type).set(time.time())
        record_last_result(participant, key_type, result, time.time())
        return VerificationRecord(
            round_id=round_id, verification_id=verification_id, participant=participant, key_type=key_type,
            vsync=vsync, entries=cut.ledger.count(participant, key_type), result=result, error=error,
            trigger=trigger, offsets=cut.offsets, started_at=started_at, finished_at=datetime.now(UTC))
