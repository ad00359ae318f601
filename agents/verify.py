"""Timer agents: the scheduled verification round (coordinator only) and the VSync ledger check (every worker)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from vsync_stream.errors import StateNotReady, VsyncError

if TYPE_CHECKING:
    from vsync_stream.ports import Worker

log = logging.getLogger(__name__)

NOT_READY_RETRY_S = 30.0
NOT_READY_GIVE_UP_S = 3600.0


def register_verify_timer(vapp: Worker) -> None:
    """Schedule ``verify_vsyncs`` on ``settings.verify_cron`` in ``settings.verify_timezone``, and the
    ledger check every ``settings.ledger_check_interval_s``.

    BACEN requires a verification at least every 36 hours and suggests off-peak hours; the default
    is 03:00 America/Sao_Paulo. The timer fires on every worker; only the coordinator (the owner of
    partition 0, ``Cluster.is_coordinator``) runs the round, so exactly one worker of the group
    verifies. A round that finds a partition recovering or moving is retried every 30 s for an hour.
    """
    settings = vapp.settings

    @vapp.faust.crontab(settings.verify_cron, timezone=ZoneInfo(settings.verify_timezone))
    async def verify_vsyncs() -> None:
        give_up = time.monotonic() + NOT_READY_GIVE_UP_S
        while vapp.cluster.is_coordinator() or vapp.entries.recovering:
            if not vapp.entries.recovering:
                try:
                    await vapp.verifier().run(trigger="schedule")
                    return
                except StateNotReady as exc:
                    log.warning("scheduled verification postponed: %s", exc)
                except VsyncError as exc:  # keep the schedule alive; the failure is logged and counted
                    log.error("scheduled verification failed: %s", exc)
                    return
            if time.monotonic() > give_up:
                log.error("scheduled verification skipped: state not ready for %.0f s", NOT_READY_GIVE_UP_S)
                return
            await asyncio.sleep(NOT_READY_RETRY_S)

    @vapp.faust.timer(settings.ledger_check_interval_s)
    async def check_vsync_ledgers() -> None:
        """Recompute the served VSyncs from the entries table; a difference is reported and repaired."""
        if not vapp.entries.recovering:
            vapp.entries.audit_ledgers()
