"""Web view of a worker: VSyncs, entries, verifications, reconciliations, health, metrics.

Every answer covers the whole table, whichever worker the request reaches: VSyncs are combined
from every partition's owner (``Cluster.snapshot``), an entry is read on its partition's owner, and
verifications and reconciliations run on the coordinator (the owner of partition 0). A request
another worker must answer is forwarded with its body and the caller's scopes, at most
``MAX_HOPS`` times; while a partition is recovering or the assignment is changing the answer is
503 with ``Retry-After`` — never a value read from the wrong worker.

Authorisation (``vsync_stream.auth``): reads that reveal no personal data (VSyncs, counts, results)
are open; anything that changes state needs the ``operate`` scope, an entry needs ``entries`` (its
Pix key masked unless the token also has ``pii``), the ``/internal/*`` endpoints the workers use
between themselves need the cluster token. The API is described in ``openapi.yaml``, served at
``GET /openapi.yaml``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from vsync_stream.auth import Scope
from vsync_stream.bridges import faust_seam
from vsync_stream.cluster import HOPS_HEADER, MAX_HOPS, Forwarded, local_pair_cids, parse_pair_cids_query
from vsync_stream.domain.fold import EntryState
from vsync_stream.domain.keys import guess_key_type, is_ascii_digits
from vsync_stream.domain.masking import mask_key
from vsync_stream.errors import StateNotReady, VsyncError
from vsync_stream.metrics import MetricsRefresher
from vsync_stream.status_page import CONTENT_SECURITY_POLICY, STATUS_HTML

if TYPE_CHECKING:
    from vsync_stream.ports import Worker

audit_log = logging.getLogger("vsync_stream.audit")

RETRY_AFTER_S = "5"
MAX_PIX_KEY_CHARS = 77  # the longest Pix key: an e-mail address (BCB DICT API)
INTERNAL_BODY_BYTES = 16 * 1024 * 1024  # find-cids: up to ~250,000 CIDs per request


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


def audit_lookup(caller: str, pix_key: str, scopes: frozenset[Scope], status: int) -> None:
    """Record one ``/entries`` lookup: who asked, the masked key, what was answered (no personal data).

    One structured log line (``vsync_stream.audit`` logger, fields ``audit``, ``caller``,
    ``maskedKey``, ``keyType``, ``status``, ``pii``); its timestamp says when.
    """
    key_type = guess_key_type(pix_key)
    audit_log.info("entry lookup by %s: %s key %s answered %d", caller, key_type or "unknown", mask_key(
        key_type or "", pix_key), status, extra={"audit": "entry_lookup", "caller": caller, "keyType": key_type,
                                                  "maskedKey": mask_key(key_type or "", pix_key), "status": status,
                                                  "pii": Scope.PII in scopes})


def register_views(vapp: Worker) -> None:
    """Add the web view's pages to the Faust app of ``vapp``."""
    app = vapp.faust
    cluster = vapp.cluster
    max_body = vapp.settings.max_request_bytes

    def not_ready(view: View, exc: VsyncError) -> Response:
        return view.json({"error": str(exc)}, status=503, headers={"Retry-After": RETRY_AFTER_S})

    def denied(view: View, request: Request, scope: Scope) -> Response | None:
        """None when the caller has ``scope``; else 401 (no valid token) or 403 (token lacks it)."""
        scopes = vapp.auth.effective_scopes(request.headers)
        if scope in scopes:
            return None
        if not scopes:
            return view.json({"error": "a valid bearer token is required"}, status=401,
                             headers={"WWW-Authenticate": "Bearer"})
        return view.json({"error": f"the token lacks the {scope.value!r} scope"}, status=403)

    async def read_body(request: Request, limit: int) -> bytes | None:
        """The whole request body, or None when it is over ``limit`` bytes.

        ``StreamReader.read(n)`` returns what has arrived, at most ``n`` bytes (aiohttp hands a
        large body over 64 KiB at a time), so the body is read to its end, chunk by chunk.
        """
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk: bytes = await request.content.read(limit + 1 - size)  # type: ignore[attr-defined]  # aiohttp request
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)

    def too_large(view: View, limit: int) -> Response:
        return view.json({"error": f"request body over {limit} bytes"}, status=413)

    async def relay(view: View, request: Request, url: str, body: bytes = b"") -> Response:
        """Forward the request to the worker at ``url`` and answer with its response."""
        scopes_in = vapp.auth.effective_scopes(request.headers)
        # Only a forwarding worker (cluster token) says how often a request went round already.
        hops = max(0, _int(request.headers.get(HOPS_HEADER, "0"))) if Scope.CLUSTER in scopes_in else 0
        if hops >= MAX_HOPS:
            return not_ready(view, StateNotReady(f"forwarded {hops} times without reaching the owner: the "
                                                 f"assignment is changing; retry in a few seconds"))
        scopes = ",".join(sorted(s.value for s in scopes_in))
        try:
            reply: Forwarded = await cluster.forward(url, request.method, str(request.rel_url), body, scopes, hops)
        except StateNotReady as exc:
            return not_ready(view, exc)
        headers = {"Retry-After": reply.retry_after} if reply.retry_after else {}
        return view.bytes(reply.body, content_type=reply.content_type, status=reply.status, headers=headers)

    async def on_coordinator(view: View, request: Request, body: bytes = b"") -> Response | None:
        """None when this worker is the coordinator (the owner of partition 0) and must answer;
        otherwise the coordinator's answer to the forwarded request (503 while nobody owns it)."""
        try:
            url = cluster.coordinator()
        except StateNotReady as exc:
            return not_ready(view, exc)
        return None if cluster.is_self(url) else await relay(view, request, url, body)

    def vsync_row(cut: Any, latest: dict[tuple[str, str], Any], participant: str, key_type: str) -> dict[str, Any]:
        last = latest.get((participant, key_type))
        return {
            "participant": participant, "keyType": key_type,
            "entries": cut.ledger.count(participant, key_type),
            "vsync": f"{cut.ledger.vsync(participant, key_type):064x}",
            "lastVerification": None if last is None else {
                "result": last.result, "vsync": last.vsync, "at": last.finished_at.isoformat()},
        }

    # -- VSyncs ----------------------------------------------------------------------------------
    @app.page("/vsync")
    async def vsync_view(self: View, request: Request) -> Response:
        try:
            cut = await cluster.snapshot()
            latest = await vapp.audit().latest_per_pair()
        except StateNotReady as exc:
            return not_ready(self, exc)
        rows = [vsync_row(cut, latest, p, t) for p in vapp.settings.participants for t in vapp.settings.key_types]
        return self.json({"vsync": rows, "offsets": {str(k): v for k, v in cut.offsets.items()},
                          "workers": cut.workers})

    @app.page("/vsync/{participant}/{key_type}")
    async def vsync_pair_view(self: View, request: Request, participant: str, key_type: str) -> Response:
        if participant not in vapp.settings.participants or key_type not in vapp.settings.key_types:
            return self.json({"error": f"unknown pair {participant}/{key_type}"}, status=404)
        try:
            cut = await cluster.snapshot()
            latest = await vapp.audit().latest_per_pair()
        except StateNotReady as exc:
            return not_ready(self, exc)
        row = vsync_row(cut, latest, participant, key_type)
        row["offsets"] = {str(k): v for k, v in cut.offsets.items()}
        return self.json(row)

    # -- entries (routed to the partition's owner) ------------------------------------------------
    @app.page("/entries/{key}")
    async def entry_view(self: View, request: Request, key: str) -> Response:
        return await serve_entry(self, request, key)  # the router has decoded the key once

    @app.page("/entries")
    async def entry_query_view(self: View, request: Request) -> Response:
        """``GET /entries?key=…``: for keys a path cannot carry (an e-mail key may contain '/')."""
        return await serve_entry(self, request, request.query.get("key", ""))

    async def serve_entry(self: View, request: Request, pix_key: str) -> Response:
        refused = denied(self, request, Scope.ENTRIES)
        if refused is not None:
            return refused
        if not pix_key or len(pix_key) > MAX_PIX_KEY_CHARS or pix_key in (".", "..") or not pix_key.isprintable():
            return self.json({"error": f"a Pix key has 1 to {MAX_PIX_KEY_CHARS} printable characters"}, status=400)
        response = await lookup_entry(self, request, pix_key)
        scopes = vapp.auth.effective_scopes(request.headers)
        if Scope.CLUSTER not in scopes:  # audited once, where the caller's request arrived (not on relays)
            audit_lookup(vapp.auth.caller(request.headers), pix_key, scopes, response.status)
        return response

    async def lookup_entry(self: View, request: Request, pix_key: str) -> Response:
        raw_key = pix_key.encode("utf-8")
        partition = cluster.partition_of(raw_key)
        try:
            owner = cluster.owner(partition)
        except StateNotReady as exc:
            return not_ready(self, exc)
        if not cluster.is_self(owner):
            return await relay(self, request, owner)
        if vapp.entries.recovering or partition not in vapp.entries.partition_states:
            return not_ready(self, StateNotReady(f"partition {partition} is recovering or moving to this worker"))
        raw = vapp.entries.read(partition, raw_key)
        pii = Scope.PII in vapp.auth.effective_scopes(request.headers)
        state = EntryState.decode(raw) if raw is not None else None
        # Without ``pii`` the answer must not tell who holds a CPF, phone or e-mail (issue #14,
        # item 8): a key held by a participant this worker does not serve answers exactly as an
        # absent key does.
        if state is None or (not pii and state.participant not in vapp.settings.participants):
            return self.json({"error": "no such key"}, status=404)
        shown = pix_key if pii else mask_key(state.key_type, pix_key)
        return self.json({
            "key": shown, "keyType": state.key_type, "participant": state.participant, "cid": state.cid,
            "active": state.cid is not None, "version": state.version,
            "occurredAt": datetime.fromtimestamp(state.occurred_at_ms / 1000, UTC).isoformat(),
            "partition": partition, "servedBy": cluster.self_url})

    # -- verifications -----------------------------------------------------------------------------
    @app.page("/verifications")
    async def verifications_view(self: View, request: Request) -> Response:
        try:
            text = request.query.get("limit", "100")
            if not is_ascii_digits(text) or not text:
                raise ValueError(text)
            limit = max(1, min(int(text), 1000))
        except ValueError:
            return self.json({"error": "limit must be an integer from 1 to 1000"}, status=400)
        try:
            records = await vapp.audit().recent_verifications(limit)
        except StateNotReady as exc:
            return not_ready(self, exc)
        return self.json({"verifications": [r.to_json() for r in records]})

    class VerifyView(View):
        async def post(self, request: Request) -> Response:
            refused = denied(self, request, Scope.OPERATE)
            if refused is not None:
                return refused
            if await read_body(request, max_body) is None:
                return too_large(self, max_body)
            forwarded = await on_coordinator(self, request)
            if forwarded is not None:
                return forwarded
            try:
                records = await vapp.verifier().run(trigger="web")
            except StateNotReady as exc:
                return not_ready(self, exc)
            return self.json({"verifications": [r.to_json() for r in records]})

    app.page("/verify")(VerifyView)

    class LedgerCheckView(View):
        async def post(self, request: Request) -> Response:
            refused = denied(self, request, Scope.OPERATE)
            if refused is not None:
                return refused
            if vapp.entries.recovering:
                return not_ready(self, StateNotReady("table partitions are recovering"))
            drifted = vapp.entries.audit_ledgers()
            return self.json({"partitions": sorted(vapp.entries.partition_states), "drifted": drifted})

    app.page("/ledger-check")(LedgerCheckView)

    # -- reconciliations (on the coordinator) -----------------------------------------------------
    class ReconcileView(View):
        async def post(self, request: Request) -> Response:
            refused = denied(self, request, Scope.OPERATE)
            if refused is not None:
                return refused
            body = await read_body(request, max_body)
            if body is None:
                return too_large(self, max_body)
            try:
                doc = json.loads(body or b"{}")
                participant, key_type = str(doc["participant"]), str(doc["keyType"])
            except (ValueError, KeyError, TypeError, RecursionError):
                return self.json({"error": 'body must be JSON {"participant": "<ISPB>", "keyType": "<key type>"}'},
                                 status=400)
            if participant not in vapp.settings.participants or key_type not in vapp.settings.key_types:
                return self.json({"error": f"unknown pair {participant}/{key_type}: participants are "
                                           f"{vapp.settings.participants}, key types {list(vapp.settings.key_types)}"},
                                 status=400)
            forwarded = await on_coordinator(self, request, body)
            if forwarded is not None:
                return forwarded
            try:
                run = vapp.reconciler().start(participant, key_type, trigger="web")
            except StateNotReady as exc:
                return not_ready(self, exc)
            return self.json(run.to_json(), status=202)

    app.page("/reconcile")(ReconcileView)

    @app.page("/reconciliations")
    async def reconciliations_view(self: View, request: Request) -> Response:
        forwarded = await on_coordinator(self, request)
        if forwarded is not None:
            return forwarded
        try:
            reconciler = vapp.reconciler()
            recent = await vapp.audit().recent_reconciliations(50)
        except StateNotReady as exc:
            return not_ready(self, exc)
        return self.json({"running": [run.to_json() for run in reconciler.running()], "recent": recent})

    @app.page("/reconciliations/{run_id}")
    async def reconciliation_view(self: View, request: Request, run_id: str) -> Response:
        forwarded = await on_coordinator(self, request)
        if forwarded is not None:
            return forwarded
        try:
            run = vapp.reconciler().runs.get(run_id)
        except StateNotReady as exc:
            return not_ready(self, exc)
        if run is None:
            return self.json({"error": "no such reconciliation on the coordinator since it started"}, status=404)
        return self.json(run.to_json())

    class CancelReconciliationView(View):
        async def post(self, request: Request, run_id: str) -> Response:
            refused = denied(self, request, Scope.OPERATE)
            if refused is not None:
                return refused
            if await read_body(request, max_body) is None:
                return too_large(self, max_body)
            forwarded = await on_coordinator(self, request)
            if forwarded is not None:
                return forwarded
            try:
                run = vapp.reconciler().cancel(run_id)
            except StateNotReady as exc:
                return not_ready(self, exc)
            if run is None:
                return self.json({"error": "no such reconciliation on the coordinator since it started"}, status=404)
            return self.json(run.to_json(), status=202)

    app.page("/reconciliations/{run_id}/cancel")(CancelReconciliationView)

    # -- health ------------------------------------------------------------------------------------
    @app.page("/healthz")
    async def health_view(self: View, request: Request) -> Response:
        """Liveness: 200 while the worker's event loop answers; the body tells what it holds."""
        entries = vapp.entries
        return self.json({"status": "ok", "ready": not entries.recovering,
                          "partitions": sorted(entries.partition_states), "coordinator": cluster.is_coordinator(),
                          "events": event_counts(),
                          "ledger": {"checks": entries.checks, "drifted": entries.drift_events,
                                     "lastDrift": entries.last_drift}}, status=200)

    @app.page("/readyz")
    async def ready_view(self: View, request: Request) -> Response:
        """Readiness: 503 while this worker's table partitions are recovering (after a start or a rebalance)."""
        entries = vapp.entries
        body = {"ready": not entries.recovering, "partitions": sorted(entries.partition_states),
                "generation": entries.generation}
        if entries.recovering:
            return self.json(body, status=503, headers={"Retry-After": RETRY_AFTER_S})
        return self.json(body)

    refresher = MetricsRefresher(vapp.settings.participants, vapp.settings.key_types, vapp.settings.partitions)

    @app.page("/metrics")
    async def metrics_view(self: View, request: Request) -> Response:
        try:
            await cluster.snapshot()
            complete = True
        except StateNotReady:
            complete = False
        refresher.refresh_table(vapp.entries, complete)
        # Faust's private attributes, read-only (faust_seam): ``app.consumer`` would create a consumer if
        # none ran yet, and the committed offsets (next offset to read, per partition) have no public
        # getter; they serve only partitions this worker has not folded anything in since it started.
        consumer = faust_seam.running_consumer(app)
        refresher.refresh_lag(consumer, vapp.entries, vapp.settings.key_events_topic,
                              faust_seam.committed_offsets(consumer))
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

    openapi = resources.files("vsync_stream").joinpath("openapi.yaml")

    @app.page("/openapi.yaml")
    async def openapi_view(self: View, request: Request) -> Response:
        return self.bytes(openapi.read_bytes(), content_type="application/yaml")

    # -- between workers (cluster token) ----------------------------------------------------------
    @app.page("/internal/partitions")
    async def partitions_view(self: View, request: Request) -> Response:
        refused = denied(self, request, Scope.CLUSTER)
        return refused or self.json(vapp.entries.report().to_json())

    def local_partition(view: View, partition: str) -> int | Response:
        number = _int(partition, -1)
        if number < 0 or number >= vapp.settings.partitions:
            return view.json({"error": "no such partition"}, status=404)
        if vapp.entries.recovering or number not in vapp.entries.partition_states:
            return not_ready(view, StateNotReady(f"partition {number} is not active and recovered here"))
        return number

    def cluster_partition(view: View, request: Request, partition: str) -> int | Response:
        """For the worker-to-worker endpoints: the caller holds the cluster scope and ``partition``
        is active and recovered here; else the refusal to send back."""
        refused = denied(view, request, Scope.CLUSTER)
        return refused if refused is not None else local_partition(view, partition)

    @app.page("/internal/row/{partition}/{key_hex}")
    async def row_view(self: View, request: Request, partition: str, key_hex: str) -> Response:
        number = cluster_partition(self, request, partition)
        if not isinstance(number, int):
            return number
        try:
            key = bytes.fromhex(key_hex)
        except ValueError:
            return self.json({"error": "the key must be hex"}, status=400)
        raw = vapp.entries.read(number, key)
        if raw is None:
            return self.json({"error": "no such key"}, status=404)
        return self.bytes(raw, content_type="application/octet-stream")

    @app.page("/internal/pair-cids/{partition}")
    async def pair_cids_view(self: View, request: Request, partition: str) -> Response:
        number = cluster_partition(self, request, partition)
        if not isinstance(number, int):
            return number
        try:
            participant, key_type = parse_pair_cids_query(request.query.get("pair", ""))
        except ValueError as exc:
            return self.json({"error": str(exc)}, status=400)
        data = await asyncio.to_thread(local_pair_cids, vapp.entries, number, participant, key_type)
        return self.bytes(data, content_type="application/octet-stream")

    class FindCidsView(View):
        async def post(self, request: Request, partition: str) -> Response:
            number = cluster_partition(self, request, partition)
            if not isinstance(number, int):
                return number
            body = await read_body(request, INTERNAL_BODY_BYTES)
            if body is None:
                return too_large(self, INTERNAL_BODY_BYTES)
            try:
                wanted = {parse_pair_cids_query(pair): set(cids) for pair, cids in json.loads(body).items()}
            except (ValueError, AttributeError, TypeError, RecursionError) as exc:
                return self.json({"error": f"malformed body: {type(exc).__name__}"}, status=400)
            found = await asyncio.to_thread(vapp.entries.find_cids, wanted, [number])
            return self.json({f"{p}/{t}": keys for (p, t), keys in found.items()})

    app.page("/internal/find-cids/{partition}")(FindCidsView)


def _int(text: str, default: int = 0) -> int:
    """``text`` as an integer when it is ASCII digits with an optional ``-``, else ``default``.

    ``int()`` alone also takes Unicode digits, spaces, ``+`` and ``_`` (issue #14, item 6).
    """
    body = text[1:] if text.startswith("-") else text
    return int(text) if is_ascii_digits(body) and body else default
