"""The worker as its web view and its timers see it: a typed port of :class:`vsync_stream.app.VsyncApp`.

``web.py`` and ``agents/verify.py`` are wired by the composition root (``app.py``) and need only
these members; typing them against this protocol instead of ``VsyncApp`` keeps the composition root
the one module that imports everything and that nothing imports (no import cycle, not even a
type-only one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from vsync_stream.auth import Authorizer
    from vsync_stream.bridges.audit_store import AuditStore
    from vsync_stream.cluster import Cluster
    from vsync_stream.reconciliation import Reconciler
    from vsync_stream.settings import Settings
    from vsync_stream.tables.entries import EntriesTable
    from vsync_stream.verification import Verifier


class Worker(Protocol):
    """One worker's parts (see :class:`vsync_stream.app.VsyncApp`)."""

    settings: Settings
    auth: Authorizer
    faust: Any  # the faust.App
    entries: EntriesTable
    cluster: Cluster

    def audit(self) -> AuditStore:
        """The audit store; raises ``StateNotReady`` while it starts."""
        ...

    def reconciler(self) -> Reconciler:
        """The reconciler; raises ``StateNotReady`` while the clients start."""
        ...

    def verifier(self) -> Verifier:
        """The verifier; raises ``StateNotReady`` while the clients start."""
        ...
