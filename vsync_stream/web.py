"""Web view of a worker: VSyncs, verifications, reconciliations, health, metrics.

Reads are open for data that reveals no personal data (VSyncs, counts, results); anything that
changes state (``POST /verify``) needs a bearer token from the settings, compared in constant time.
"""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from vsync_stream.errors import StateNotReady, VsyncError
from vsync_stream.metrics import MetricsRefresher
from vsync_stream.status_page import CONTENT_SECURITY_POLICY, STATUS_HTML

if TYPE_CHECKING:
    from vsync_stream.app import VsyncApp

RETRY_AFTER_S = "5"
MAX_BODY_BYTES = 4096


def bearer_allowed(request: Request, tokens: list[str]) -> bool:
    """Tell whether the request carries one of ``tokens`` as ``Authorization: Bearer <token>``."""
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    supplied = given.strip().encode("utf-8")
    allowed = False
    for token in tokens:  # no early exit: the time taken does not tell which token nearly matched
        allowed |= hmac.compare_digest(supplied, token.encode("utf-8"))
    return allowed


def _counter(name: str) -> int:
    return int(REGISTRY.get_sample_value(name) or 0)


def event_counts() -> dict[str, int]:
    """Totals of this worker process: events received, forwarded, folded, duplicate, stale, dead-lettered."""
    dead = sum(int(s.value) for m in REGISTRY.collect() if m.name == "vsync_dead_letters"
               for s in m.samples if s.name == "vsync_dead_letters_total")
    return {
        "received": _counter("vsync_events_received_total"),
        "forwarded": _counter("vsync_events_forwarded_total"),
        "folded": _counter("vsync_events_folded_total"),
        "duplicate": _counter("vsync_events_duplicate_total"),
        "stale": _counter("vsync_events_stale_total"),
        "deadLettered": dead,
    }


def register_views(vapp: VsyncApp) -> None:
    """Add the web view's pages to the Faust app of ``vapp``."""
    app = vapp.faust

    def not_ready(view: View, exc: VsyncError) -> Response:
        return view.json({"error": str(exc)}, status=503, headers={"Retry-After": RETRY_AFTER_S})

    @app.page("/vsync")
    async def vsync_view(self: View, request: Request) -> Response:
        try:
            cut = vapp.entries.snapshot()
            latest = await vapp.audit().latest_per_pair()
        except StateNotReady as exc:
            return not_ready(self, exc)
        rows: list[dict[str, Any]] = []
        for participant in vapp.settings.participants:
            for key_type in vapp.settings.key_types:
                last = latest.get((participant, key_type))
                rows.append({
                    "participant": participant, "keyType": key_type,
                    "entries": cut.ledger.count(participant, key_type),
                    "vsync": f"{cut.ledger.vsync(participant, key_type):064x}",
                    "lastVerification": None if last is None else {
                        "result": last.result, "vsync": last.vsync, "at": last.finished_at.isoformat()},
                })
        return self.json({"vsync": rows, "offsets": {str(k): v for k, v in cut.offsets.items()}})

    @app.page("/verifications")
    async def verifications_view(self: View, request: Request) -> Response:
        try:
            limit = max(1, min(int(request.query.get("limit", "100")), 1000))
        except ValueError:
            return self.error(400, "limit must be an integer from 1 to 1000")
        try:
            records = await vapp.audit().recent_verifications(limit)
        except StateNotReady as exc:
            return not_ready(self, exc)
        return self.json({"verifications": [r.to_json() for r in records]})

    class VerifyView(View):
        async def post(self, request: Request) -> Response:
            if not bearer_allowed(request, vapp.tokens):
                return self.json({"error": "a valid bearer token is required"}, status=401,
                                 headers={"WWW-Authenticate": "Bearer"})
            try:
                records = await vapp.verifier().run(trigger="web")
            except StateNotReady as exc:
                return not_ready(self, exc)
            return self.json({"verifications": [r.to_json() for r in records]})

    app.page("/verify")(VerifyView)

    class LedgerCheckView(View):
        async def post(self, request: Request) -> Response:
            if not bearer_allowed(request, vapp.tokens):
                return self.json({"error": "a valid bearer token is required"}, status=401,
                                 headers={"WWW-Authenticate": "Bearer"})
            if vapp.entries.recovering:
                return not_ready(self, StateNotReady("table partitions are recovering"))
            drifted = vapp.entries.audit_ledgers()
            return self.json({"partitions": sorted(vapp.entries.partition_states), "drifted": drifted})

    app.page("/ledger-check")(LedgerCheckView)

    class ReconcileView(View):
        async def post(self, request: Request) -> Response:
            if not bearer_allowed(request, vapp.tokens):
                return self.json({"error": "a valid bearer token is required"}, status=401,
                                 headers={"WWW-Authenticate": "Bearer"})
            body = await request.content.read(MAX_BODY_BYTES + 1)
            if len(body) > MAX_BODY_BYTES:
                return self.error(413, f"request body over {MAX_BODY_BYTES} bytes")
            try:
                doc = json.loads(body or b"{}")
                participant, key_type = str(doc["participant"]), str(doc["keyType"])
            except (ValueError, KeyError, TypeError):
                return self.error(400, 'body must be JSON {"participant": "<ISPB>", "keyType": "<key type>"}')
            if participant not in vapp.settings.participants or key_type not in vapp.settings.key_types:
                return self.error(400, f"unknown pair {participant}/{key_type}: participants are "
                                       f"{vapp.settings.participants}, key types {list(vapp.settings.key_types)}")
            try:
                run = vapp.reconciler().start(participant, key_type, trigger="web")
            except StateNotReady as exc:
                return not_ready(self, exc)
            return self.json(run.to_json(), status=202)

    app.page("/reconcile")(ReconcileView)

    @app.page("/reconciliations")
    async def reconciliations_view(self: View, request: Request) -> Response:
        try:
            reconciler = vapp.reconciler()
        except StateNotReady as exc:
            return not_ready(self, exc)
        running = [run.to_json() for run in reconciler.running()]
        return self.json({"running": running, "recent": await vapp.audit().recent_reconciliations(50)})

    @app.page("/reconciliations/{run_id}")
    async def reconciliation_view(self: View, request: Request, run_id: str) -> Response:
        try:
            run = vapp.reconciler().runs.get(run_id)
        except StateNotReady as exc:
            return not_ready(self, exc)
        if run is None:
            return self.error(404, "no such reconciliation on this worker")
        return self.json(run.to_json())

    @app.page("/healthz")
    async def health_view(self: View, request: Request) -> Response:
        ready = not vapp.entries.recovering
        entries = vapp.entries
        return self.json({"status": "ok", "ready": ready, "partitions": sorted(entries.partition_states),
                          "events": event_counts(),
                          "ledger": {"checks": entries.checks, "drifted": entries.drift_events,
                                     "lastDrift": entries.last_drift}}, status=200)

    refresher = MetricsRefresher(vapp.settings.participants, vapp.settings.key_types, vapp.settings.partitions)

    @app.page("/metrics")
    async def metrics_view(self: View, request: Request) -> Response:
        refresher.refresh_table(vapp.entries)
        # Faust's private attributes, read-only: ``app.consumer`` would create a consumer if none ran
        # yet, and the committed offsets (next offset to read, per partition) have no public getter;
        # they serve only partitions this worker has not folded anything in since it started.
        consumer = getattr(app, "_consumer", None)
        refresher.refresh_lag(consumer, vapp.entries, vapp.settings.key_events_topic,
                              getattr(consumer, "_committed_offset", None))
        try:
            refresher.refresh_reconciliations(vapp.reconciler().running())
            audit = vapp.audit()
        except StateNotReady:
            pass
        else:
            await refresher.refresh_audit(audit.latest_per_pair, audit.last_ok_per_pair)
        return self.bytes(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/status")
    async def status_view(self: View, request: Request) -> Response:
        return self.html(STATUS_HTML, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                                               "Cache-Control": "no-store"})
