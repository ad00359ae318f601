"""The DICT simulator's REST face: BCB's DICT API (XML, mutual TLS, signed XML) over a :class:`DictModel`.

Serves the reconciliation operations of BCB DICT API v1.2.0 under ``/api/v1/`` with ``aiohttp.web``
(see :mod:`vsync_stream.bridges.dict_api` for the client): ``POST sync-verifications/``,
``POST cids/files/``, ``GET cids/files/{Id}``, ``GET cids/events``, ``GET cids/entries/{Cid}``,
``GET policies/``, and the CID files themselves under ``/files/{job}`` (with HTTP ``Range``).

Like the DICT: TLS requires a client certificate from the participant CA; the two POSTs must carry
a valid enveloped signature from the participant CA (else 400 ``RequestSignatureInvalid``); bodies
are checked against the XSD (400 ``BadRequest``); every 2xx answer is signed with the DICT's signing
certificate; gzip when asked; the same token buckets as the gRPC face (:func:`dict_rate_limits`),
429 ``RateLimited`` with the ``PI-RateLimit-Participant*`` headers when one is empty.

Fault hooks (plain attributes, changeable while serving): ``unavailable`` / :meth:`inject_unavailable`
(503 ``ServiceUnavailable`` with ``Retry-After``), ``response_fault`` (``UNSIGNED``, ``TAMPERED``:
content changed after signing, ``SCHEMA``: a signed body that violates the schema, ``MISMATCH``: a
validly signed sync verification answering OK about the DICT's own VSync, not the one sent), ``signer``
(replace it to sign with another key, e.g. an expired or foreign certificate), ``download_faults``
(per coming download request: ``DROP`` the connection halfway, or answer ``503``), and the CID file
store's ``outcome``/``corruption`` as in the gRPC face.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import re
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from aiohttp import web
from lxml import etree

from vsync_stream.bridges import dict_xml as dx
from vsync_stream.bridges.dict_api import POLICY_OF
from vsync_stream.bridges.dict_xml import correlation_id
from vsync_stream.domain.keys import KEY_TYPES, is_ispb
from vsync_stream.errors import DictResponseInvalid, DictSignatureInvalid
from vsync_stream.simulator.cid_files import CidFileJob, CidFileStore
from vsync_stream.simulator.model import CidLogEvent, DictModel
from vsync_stream.simulator.rest_pki import DictPki
from vsync_stream.simulator.server import TokenBucket, dict_rate_limits

log = logging.getLogger(__name__)

__all__ = ["RestDictSimulator"]

ResponseFault = Literal["UNSIGNED", "TAMPERED", "SCHEMA", "MISMATCH"]
DownloadFault = Literal["DROP", "503"]
_RANGE_RE = re.compile(r"^bytes=(\d+)-$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Problem(Exception):
    def __init__(self, status: int, type_name: str, title: str, detail: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(title)
        self.status, self.type_name, self.title, self.detail = status, type_name, title, detail
        self.headers = dict(headers or {})


class RestDictSimulator:
    """A running DICT API over a model; ``async with`` or :meth:`start`/:meth:`stop`.

    Args:
        model: the DICT state (share it with a :class:`~vsync_stream.simulator.server.DictSimulator`
            to serve both faces of one DICT).
        pki: the certificates (:func:`~vsync_stream.simulator.rest_pki.make_dict_pki`).
        rate_limits: bucket per Bridge operation name; the DICT's limits when None.
        cid_file_delay_s, cid_file_dir, cid_file_upper_fraction, seed: as the gRPC face's CID files.
        latency_s: seconds added before every answer.
    """

    def __init__(self, model: DictModel, pki: DictPki, *, rate_limits: Mapping[str, TokenBucket] | None = None,
                 cid_file_delay_s: float = 0.5, cid_file_dir: str | Path | None = None,
                 cid_file_upper_fraction: float = 0.25, seed: int | None = None, latency_s: float = 0.0) -> None:
        self.model = model
        self.pki = pki
        self.rate_limits = dict(rate_limits) if rate_limits is not None else dict_rate_limits()
        self.cid_files = CidFileStore(cid_file_dir, delay_s=cid_file_delay_s, upper_fraction=cid_file_upper_fraction,
                                      seed=seed)
        self.latency_s = latency_s
        self.unavailable = False
        self.response_fault: ResponseFault | None = None
        self.download_faults: list[DownloadFault] = []
        self.signer = dx.XmlSigner.from_files(pki.dict_signing_key, pki.dict_signing_cert)
        self._request_verifier = dx.XmlVerifier(pki.participant_ca.pem_path)
        self.calls: Counter[str] = Counter()
        self.rejections: Counter[str] = Counter()
        self.downloads: Counter[str] = Counter()  # "full", "ranged", "dropped", "503"
        self.gzipped = 0  # answers sent gzip-compressed (the client asked with Accept-Encoding)
        self._bursts: Counter[str] = Counter()
        self._file_ids = itertools.count(1)
        self._jobs: dict[str, CidFileJob] = {}  # the DICT's integer id (as text) -> job
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.host = "127.0.0.1"

    @property
    def url(self) -> str:
        """The API root, ``https://<host>:<port>/api/v1/``.

        Raises:
            RuntimeError: not started.
        """
        if self.port is None:
            raise RuntimeError("RestDictSimulator is not started")
        return f"https://{self.host}:{self.port}/api/v1/"

    def ssl_context(self) -> ssl.SSLContext:
        """The server side of mutual TLS: the DICT's server certificate, client certificates required."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.pki.participant_ca.pem_path))
        context.load_cert_chain(str(self.pki.server_cert), str(self.pki.server_key))
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    async def start(self, host: str = "127.0.0.1", port: int = 0, *,
                    ssl_context: ssl.SSLContext | None = None) -> int:
        """Bind and serve; returns the port (0 picks a free one).

        Raises:
            RuntimeError: already started.
            OSError: the address cannot be bound.
        """
        if self._runner is not None:
            raise RuntimeError("RestDictSimulator is already started")
        app = web.Application(middlewares=[self._middleware])
        api = "/api/v1/"
        app.router.add_post(api + "sync-verifications/", self._sync_verification)
        app.router.add_post(api + "cids/files/", self._create_cid_file)
        app.router.add_get(api + "cids/files/{file_id}", self._get_cid_file)
        app.router.add_get(api + "cids/events", self._cid_events)
        app.router.add_get(api + "cids/entries/{cid}", self._entry_by_cid)
        app.router.add_get(api + "policies/", self._policies)
        app.router.add_get("/files/{job}", self._download)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context or self.ssl_context())
        await site.start()
        self._runner, self.host = runner, host
        self.port = runner.addresses[0][1]
        log.info("DICT simulator serving the DICT REST API on https://%s:%d/api/v1/ (mutual TLS)", host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop serving and delete the CID files."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            self.port = None
        await self.cid_files.close()

    async def __aenter__(self) -> RestDictSimulator:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def inject_unavailable(self, calls: int, operation: str | None = None) -> None:
        """The next ``calls`` calls (of ``operation``, a Bridge operation name, or any) answer 503."""
        self._bursts[operation or "*"] += calls

    # ------------------------------------------------------------------ plumbing

    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Problem as problem:
            response = web.Response(status=problem.status, headers=problem.headers,
                                    body=dx.problem_document(problem.status, problem.type_name, problem.title,
                                                             problem.detail),
                                    content_type="application/problem+xml")
            return response

    async def _admit(self, operation: str) -> dict[str, str]:
        """Fault hooks and the rate limit; returns the rate-limit headers of a successful answer."""
        self.calls[operation] += 1
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        burst = next((key for key in (operation, "*") if self._bursts[key] > 0), None)
        if self.unavailable or burst is not None:
            if burst is not None:
                self._bursts[burst] -= 1
            raise _Problem(503, "ServiceUnavailable", "Service Unavailable", "the DICT is unavailable (simulated)",
                           {"Retry-After": "1"})
        bucket = self.rate_limits.get(operation)
        if bucket is None:
            return {}
        policy = POLICY_OF[operation]
        if not bucket.try_take():
            self.rejections[operation] += 1
            wait = bucket.seconds_until_token()
            reset = str(math.ceil(wait)) if math.isfinite(wait) else str(2**31)
            raise _Problem(429, "RateLimited", "Rate limited", None,
                           {"PI-RateLimit-ParticipantPolicy": policy, "PI-RateLimit-ParticipantRemaining": "0",
                            "PI-RateLimit-ParticipantReset": reset})
        return {"PI-RateLimit-ParticipantPolicy": policy,
                "PI-RateLimit-ParticipantRemaining": str(math.floor(bucket.tokens))}

    def _answer(self, request: web.Request, root: etree._Element, status: int = 200,
                headers: Mapping[str, str] | None = None) -> web.Response:
        """Sign (or not, under a fault) and send a document; gzip when the client accepts it."""
        fault = self.response_fault
        if fault == "SCHEMA":
            etree.SubElement(root, "NotInTheSchema").text = "x"
        if fault == "UNSIGNED":
            for placeholder in root.findall(f"{{{dx.DS_NS}}}Signature"):
                root.remove(placeholder)
            body = dx.to_bytes(root)
        else:
            body = self.signer.sign(root)
        if fault == "TAMPERED":
            body = _tamper(body)
        response = web.Response(status=status, body=body, content_type="application/xml", charset="utf-8",
                                headers=headers)
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            response.enable_compression(web.ContentCoding.gzip)
            self.gzipped += 1
        return response

    async def _signed_request(self, request: web.Request, expected_root: str) -> etree._Element:
        data = await request.read()
        try:
            root = self._request_verifier.verify(data, "request")
        except DictSignatureInvalid as exc:
            raise _Problem(400, "RequestSignatureInvalid", "Request signature is invalid", str(exc)[:200]) from None
        except DictResponseInvalid:
            raise _Problem(400, "BadRequest", "Bad Request", "Could not parse request body") from None
        try:
            dx.validate(root, "request", expected_root)
        except DictResponseInvalid as exc:
            raise _Problem(400, "BadRequest", "Bad Request", str(exc)[:200]) from None
        return root

    @staticmethod
    def _requesting(request: web.Request) -> str:
        value = request.headers.get("PI-RequestingParticipant", "")
        if not is_ispb(value):
            raise _Problem(400, "BadRequest", "Bad Request", "PI-RequestingParticipant must be an 8-digit ISPB")
        return value

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.model.now_ms() / 1000, UTC)

    # ------------------------------------------------------------------ operations

    async def _sync_verification(self, request: web.Request) -> web.Response:
        headers = await self._admit("VerifySync")
        root = await self._signed_request(request, "CreateSyncVerificationRequest")
        participant = root.findtext("SyncVerification/Participant") or ""
        key_type = root.findtext("SyncVerification/KeyType") or ""
        vsync = root.findtext("SyncVerification/SyncVerifier") or ""
        if self.response_fault == "MISMATCH":  # a signed answer about another VSync than the one asked
            vsync = self.model.vsync(participant, key_type)
        record = self.model.check_sync(participant, key_type, vsync)
        log.info("REST createSyncVerification %s/%s: %s", participant, key_type, record.result)
        return self._answer(request, dx.sync_verification_response(
            participant, key_type, vsync, record.verification_id, record.result, correlation_id(), self._now()),
            201, headers)

    async def _create_cid_file(self, request: web.Request) -> web.Response:
        headers = await self._admit("CreateCidFile")
        root = await self._signed_request(request, "CreateCidSetFileRequest")
        participant, key_type = root.findtext("Participant") or "", root.findtext("KeyType") or ""
        job = self.cid_files.create(participant, key_type, self.model.cid_snapshot(participant, key_type),
                                    self.model.now_ms())
        file_id = str(next(self._file_ids))
        self._jobs[file_id] = job
        return self._answer(request, self._file_document("CreateCidSetFileResponse", request, file_id, job),
                            201, headers)

    async def _get_cid_file(self, request: web.Request) -> web.Response:
        headers = await self._admit("GetCidFile")
        self._requesting(request)
        file_id = request.match_info["file_id"]
        job = self._jobs.get(file_id)
        if job is None:
            raise _Problem(404, "NotFound", "Not found", "CID file does not exist")
        return self._answer(request, self._file_document("GetCidSetFileResponse", request, file_id, job),
                            200, headers)

    def _file_document(self, tag: Literal["CreateCidSetFileResponse", "GetCidSetFileResponse"],
                       request: web.Request, file_id: str, job: CidFileJob) -> etree._Element:
        store = self.cid_files
        status = store.status(job) if tag == "GetCidSetFileResponse" else "REQUESTED"
        requested = datetime.fromtimestamp(job.requested_at_ms / 1000, UTC)
        if status != "AVAILABLE":
            return dx.cid_set_file_response(tag, int(file_id), status, job.participant, job.key_type, requested,
                                            correlation_id(), self._now())
        sha256 = store.announced_sha256(job)
        return dx.cid_set_file_response(
            tag, int(file_id), status, job.participant, job.key_type, requested, correlation_id(), self._now(),
            created_at=self._now(), url=f"{request.url.origin()}/files/{job.job_id}", byte_size=job.byte_size or 0,
            sha256=sha256.upper() if store.upper_fraction > 0 else sha256)

    async def _cid_events(self, request: web.Request) -> web.Response:
        headers = await self._admit("ListCidEvents")
        query = request.query
        participant, key_type = query.get("Participant", ""), query.get("KeyType", "")
        if not is_ispb(participant) or key_type not in KEY_TYPES:
            raise _Problem(400, "BadRequest", "Bad Request", "Participant and KeyType are required and valid")
        try:
            start = dx.parse_time(query["StartTime"]) if "StartTime" in query else datetime.fromtimestamp(0, UTC)
            end = dx.parse_time(query["EndTime"]) if "EndTime" in query else None
            limit = int(query.get("Limit", "200"))
        except ValueError:
            raise _Problem(400, "BadRequest", "Bad Request", "StartTime/EndTime must be date-times, Limit an integer"
                           ) from None
        if not 1 <= limit <= 200:
            raise _Problem(400, "BadRequest", "Bad Request", "Limit must be between 1 and 200")
        start_ms = -(-_epoch_us(start) // 1000)  # whole ms at or after StartTime
        end_ms = None if end is None else _epoch_us(end) // 1000 + 1  # EndTime is inclusive
        events: list[CidLogEvent] = []
        more = False
        if end_ms is None or end_ms > start_ms:
            events, more = self.model.cid_log_page(participant, key_type, start_ms, end_ms, limit)
        return self._answer(request, dx.list_cid_set_events_response(
            participant, key_type, [(e.type, e.cid, e.timestamp_ms) for e in events], more,
            events[0].vsync_after if events else None, events[-1].vsync_after if events else None,
            correlation_id(), self._now(), start=start, end=end), 200, headers)

    async def _entry_by_cid(self, request: web.Request) -> web.Response:
        headers = await self._admit("GetEntryByCid")
        participant = self._requesting(request)
        cid = request.match_info["cid"]
        if len(cid) != 64 or cid.strip("0123456789abcdefABCDEF"):
            raise _Problem(400, "BadRequest", "Bad Request", "Cid must be 64 hex characters")
        entry = next((found for key_type in KEY_TYPES
                      if (found := self.model.entry_by_cid(participant, key_type, cid)) is not None), None)
        if entry is None:
            raise _Problem(404, "NotFound", "Not found", "no active entry of this participant has that CID")
        return self._answer(request, dx.entry_by_cid_response(entry, cid.lower(), correlation_id(), self._now()),
                            200, headers)

    async def _policies(self, request: web.Request) -> web.Response:
        self._requesting(request)
        policies = []
        for operation, bucket in self.rate_limits.items():
            tokens, period = _refill_as_published(bucket.refill_per_s)
            bucket.seconds_until_token()  # brings ``tokens`` up to date
            policies.append(dx.Policy(POLICY_OF[operation], math.floor(bucket.capacity), tokens, period,
                                      math.floor(bucket.tokens)))
        return self._answer(request, dx.policies_response(policies, correlation_id(), self._now()))

    async def _download(self, request: web.Request) -> web.StreamResponse:
        job = next((j for j in self._jobs.values() if j.job_id == request.match_info["job"]), None)
        if job is None or self.cid_files.status(job) != "AVAILABLE":
            raise _Problem(404, "NotFound", "Not found", "no such CID file")
        fault = self.download_faults.pop(0) if self.download_faults else None
        if fault == "503":
            self.downloads["503"] += 1
            raise _Problem(503, "ServiceUnavailable", "Service Unavailable", "file server busy (simulated)",
                           {"Retry-After": "1"})
        size = (job.byte_size or 0) - (1 if self.cid_files.corruption == "TRUNCATE" else 0)
        offset = 0
        if "Range" in request.headers:
            match = _RANGE_RE.match(request.headers["Range"])
            if match is None or int(match[1]) > size:
                raise _Problem(416, "BadRequest", "Range Not Satisfiable", "only 'bytes=N-' ranges are served")
            offset = int(match[1])
        response = web.StreamResponse(status=206 if offset else 200, headers={"Accept-Ranges": "bytes"})
        response.content_type = "text/plain"
        response.content_length = size - offset
        if offset:
            response.headers["Content-Range"] = f"bytes {offset}-{size - 1}/{size}"
        self.downloads["ranged" if offset else "full"] += 1
        await response.prepare(request)
        stop_at = offset + (size - offset) // 2 if fault == "DROP" else size
        with job.path.open("rb") as source:
            source.seek(offset)
            position = offset
            while position < stop_at:
                data = await asyncio.to_thread(source.read, min(1 << 16, stop_at - position))
                if not data:
                    break
                await response.write(data)
                position += len(data)
        if fault == "DROP":
            self.downloads["dropped"] += 1
            if request.transport is not None:
                request.transport.close()  # the connection breaks mid-body, as a crashing file server's would
            return response
        await response.write_eof()
        return response


def _epoch_us(moment: datetime) -> int:
    """Microseconds since the epoch, exactly (no float rounding)."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _refill_as_published(refill_per_s: float) -> tuple[int, int]:
    """``(RefillTokens, RefillPeriodSec)`` of a refill rate, in the smallest whole period that fits."""
    for period in (1, 60, 3600, 86_400):
        tokens = refill_per_s * period
        if tokens >= 1 and abs(tokens - round(tokens)) < 1e-6:
            return round(tokens), period
    return max(1, round(refill_per_s * 86_400)), 86_400


def _tamper(body: bytes) -> bytes:
    """Change the signed content after signing (the signature then no longer verifies)."""
    for old, new in ((b"<Result>OK<", b"<Result>NOK<"), (b"<Result>NOK<", b"<Result>OK<"),
                     (b"<HasMoreElements>true<", b"<HasMoreElements>false<"), (b"<Status>", b"<Status>"),
                     (b"<Key>", b"<Key>x")):
        if old in body and old != new:
            return body.replace(old, new, 1)
    return body.replace(b"<CorrelationId>", b"<CorrelationId>0", 1)
