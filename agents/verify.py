"""Timer agents: the scheduled verification round (leader only) and the VSync ledger check (every worker)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from vsync_stream.errors import VsyncError

if TYPE_CHECKING:
    from vsync_stream.app import VsyncApp

log = logging.getLogger(__name__)


def register_verify_timer(vapp: VsyncApp) -> None:
    """Schedule ``verify_vsyncs`` on ``settings.verify_cron`` in ``settings.verify_timezone``, and the
    ledger check every ``settings.ledger_check_interval_s``.

    BACEN requires a verification at least every 36 hours and suggests off-peak hours; the default
    is 03:00 America/Sao_Paulo.
    """
    settings = vapp.settings

    @vapp.faust.crontab(settings.verify_cron, timezone=ZoneInfo(settings.verify_timezone), on_leader=True)
    async def verify_vsyncs() -> None:
        try:
            await vapp.verifier().run(trigger="schedule")
        except VsyncError as exc:  # keep the schedule alive; the failure is logged and counted
            log.error("scheduled verification failed: %s", exc)

    @vapp.faust.timer(settings.ledger_check_interval_s)
    async def check_vsync_ledgers() -> None:
        """Recompute the served VSyncs from the entries table; a difference is reported and repaired."""
        if not vapp.entries.recovering:
            vapp.entries.audit_ledgers()
