"""Client of BCB's DICT REST API (XML over mutual TLS) for the reconciliation operations.

BCB DICT API v1.2.0 (``bacen/pix-dict-api``): ``POST /sync-verifications/`` (createSyncVerification),
``POST /cids/files/`` and ``GET /cids/files/{Id}`` (createCidSetFile, getCidSetFile) and the file's
``Url``, ``GET /cids/events`` (listCidSetEvents), ``GET /cids/entries/{Cid}`` (getEntryByCid) and
``GET /policies/`` (the rate-limit policies, ``ListPoliciesResponse``). Per the specification:

* mutual TLS with the participant's certificate (an :class:`ssl.SSLContext` trusting only the
  configured CA), one pooled ``aiohttp`` session (mTLS set-up is expensive: connections are kept);
* the ``PI-RequestingParticipant`` header on every call; ``Accept-Encoding: gzip``;
* an enveloped XML signature on every request that changes data (the two POSTs), and the DICT's
  signature verified on every successful response before it is read (:mod:`.dict_xml`); the signed
  content is then checked against the XSD, and every answer is checked to be about what was asked
  (participant, key type, VSync, CID), so a mismatched answer is an error, never a wrong result;
* problem responses (RFC 7807) mapped to the exception tree: 429 ``RateLimited`` → :class:`RateLimited`
  with the policy and the reset time; 5xx → :class:`BridgeUnavailable` (``Retry-After`` kept);
  404 → :class:`BridgeNotFound`; 400/403 → :class:`BridgeError` with ``http_status``; TLS failures
  → :class:`DictTlsError`; signature/schema failures → :class:`DictSignatureInvalid` /
  :class:`DictResponseInvalid` (none of these three is retriable);
* a token bucket per policy (:class:`~vsync_stream.bridges.pacing.Pacer`), shaped from the policies
  endpoint (falling back to :data:`~vsync_stream.bridges.pacing.DICT_RATE_LIMITS`), taken before
  each call.

Unary calls are not retried here: the product's Bridge client retries what is retriable, with
backoff, so a second layer would multiply attempts. The CID file download is retried here, resumed
with an HTTP ``Range`` from the last byte received (a 5xx or a dropped connection mid-file), and
checked against the announced size and SHA-256.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import ssl
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

import aiohttp
from lxml import etree

from vsync_stream.bridges import dict_xml as dx
from vsync_stream.bridges.bridge_proto import CidEventsPage, CidFileStatus, VerifyResult
from vsync_stream.bridges.pacing import DICT_RATE_LIMITS, Pacer, RateLimit
from vsync_stream.domain.entry import Entry
from vsync_stream.domain.keys import is_ascii_digits, is_ispb
from vsync_stream.errors import (
    BridgeError,
    BridgeNotFound,
    BridgeUnavailable,
    CidFileCorrupt,
    ConfigurationError,
    DictResponseInvalid,
    DictTlsError,
    RateLimited,
)

__all__ = ["POLICY_OF", "DictApiClient", "limits_from_policies"]

log = logging.getLogger(__name__)

# Bridge operation -> the DICT's rate-limit policy (BCB DICT API, "Limitação de requisições").
POLICY_OF: Mapping[str, str] = {
    "VerifySync": "SYNC_VERIFICATIONS_WRITE",
    "CreateCidFile": "CIDS_FILES_WRITE",
    "GetCidFile": "CIDS_FILES_READ",
    "ListCidEvents": "CIDS_EVENTS_LIST",
    "GetEntryByCid": "CIDS_ENTRIES_READ",
}
MAX_PAGE_SIZE = 200
DOWNLOAD_CHUNK = 1 << 16


def limits_from_policies(policies: list[dx.Policy]) -> dict[str, RateLimit]:
    """The bucket shapes of the Bridge operations from the DICT's published policies.

    Returns:
        Operation → :class:`RateLimit` for the operations whose policy is listed with a positive
        capacity and refill; the others are left out (the caller keeps its defaults for them).
    """
    by_name = {p.name: p for p in policies}
    limits = {}
    for operation, name in POLICY_OF.items():
        policy = by_name.get(name)
        if policy and policy.capacity >= 1 and policy.refill_tokens > 0 and policy.refill_period_s > 0:
            limits[operation] = RateLimit(float(policy.capacity), policy.refill_tokens / policy.refill_period_s)
    return limits


class DictApiClient:
    """One participant's client of the DICT API; create and use it inside one event loop.

    Args:
        base_url: the API root, e.g. ``https://dict-h.pi.rsfn.net.br:16522/api/v1/``.
        participant: ISPB sent as ``PI-RequestingParticipant``, 8 digits.
        tls_ca: PEM CA that signs the DICT's server certificate (the only one trusted).
        tls_cert: PEM client certificate chain (mutual TLS).
        tls_key: PEM private key of ``tls_cert``.
        signing_cert: PEM certificate of the participant's XML signatures.
        signing_key: PEM private key of ``signing_cert``.
        verify_ca: PEM CA of the DICT's XML signing certificate.
        timeout_s: deadline of one HTTP exchange, seconds (a download: per chunk read).
        download_attempts: attempts of a CID file download, the first included (resumed each time).
        rate_limits: per-operation bucket overrides (None turns pacing off for that operation),
            merged over what the policies endpoint says.
        load_policies: read the policies endpoint at :meth:`start` (else the published table).
        pacing_margin_s: see :func:`~vsync_stream.bridges.pacing.reserve_tokens`.

    Raises:
        ConfigurationError: a file cannot be read, or the participant is not 8 digits.
    """

    def __init__(self, base_url: str, participant: str, *, tls_ca: str | Path, tls_cert: str | Path,
                 tls_key: str | Path, signing_cert: str | Path, signing_key: str | Path, verify_ca: str | Path,
                 timeout_s: float = 10.0, download_attempts: int = 4,
                 rate_limits: Mapping[str, RateLimit | None] | None = None, load_policies: bool = True,
                 pacing_margin_s: float = 1.0) -> None:
        if not is_ispb(participant):
            raise ConfigurationError("the requesting participant (VSYNC_DICT_API_PARTICIPANT) must be an 8-digit ISPB")
        self.base_url = base_url.rstrip("/") + "/"
        self.participant = participant
        self.timeout_s = timeout_s
        self.download_attempts = max(1, download_attempts)
        self._overrides = dict(rate_limits or {})
        self._load_policies = load_policies
        self._margin_s = pacing_margin_s
        try:
            self._ssl = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls_ca))
            self._ssl.load_cert_chain(str(tls_cert), str(tls_key))
            self._signer = dx.XmlSigner.from_files(signing_key, signing_cert)
            self._verifier = dx.XmlVerifier(verify_ca)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigurationError(f"cannot load the DICT API certificates: {exc}; check the "
                                     "VSYNC_DICT_API_TLS_* / _SIGNING_* / _VERIFY_CA files") from exc
        self.pacer = Pacer({**DICT_RATE_LIMITS, **self._overrides}, margin_s=pacing_margin_s)
        self.policies: list[dx.Policy] = []
        self._session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the session and, unless turned off, shape the buckets from the policies endpoint.

        Raises:
            DictTlsError, DictSignatureInvalid, DictResponseInvalid, BridgeUnavailable: reading the
                policies failed (the DICT cannot be used either way).
        """
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=32, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_read=self.timeout_s,
                                                                   sock_connect=self.timeout_s),
                headers={"PI-RequestingParticipant": self.participant, "Accept": "application/xml",
                         "Accept-Encoding": "gzip"})
        if self._load_policies:
            try:
                await self.refresh_policies()
            except BaseException:
                await self.stop()  # `async with` does not exit what did not enter
                raise

    async def stop(self) -> None:
        """Close the session (pooled connections included)."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def refresh_policies(self) -> list[dx.Policy]:
        """Read ``GET /policies/`` and rebuild the buckets: shape from Capacity/RefillTokens/
        RefillPeriodSec, level from AvailableTokens (tokens the DICT says are gone are taken here too).

        Returns:
            The policies as published.
        """
        root = await self._request("ListPolicies", "GET", "policies/", expected_root="ListPoliciesResponse")
        self.policies = dx.parse_policies(root)
        published = limits_from_policies(self.policies)
        pacer = Pacer({**DICT_RATE_LIMITS, **published, **self._overrides}, margin_s=self._margin_s)
        by_name = {p.name: p for p in self.policies}
        for operation, name in POLICY_OF.items():
            policy = by_name.get(name)
            if policy is None or operation not in published:
                continue
            for _ in range(max(0, policy.capacity - policy.available_tokens)):
                if pacer.tokens_left(operation) < 1:
                    break
                await pacer.acquire(operation)
        self.pacer = pacer
        log.info("DICT API policies read: %s", ", ".join(f"{p.name}={p.refill_tokens}/{p.refill_period_s}s:"
                                                         f"{p.capacity}" for p in self.policies) or "none")
        return self.policies

    # ------------------------------------------------------------------ operations

    async def verify_sync(self, participant: str, key_type: str, vsync: str) -> VerifyResult:
        """createSyncVerification: OK when the DICT's VSync of (participant, key type) equals ``vsync``.

        Raises:
            DictResponseInvalid: the answer is about another participant, key type or VSync.
            RateLimited, BridgeUnavailable, BridgeError, DictSignatureInvalid, DictTlsError: see the module.
        """
        body = self._signer.sign(dx.sync_verification_request(participant, key_type, vsync))
        root = await self._request("VerifySync", "POST", "sync-verifications/", body=body,
                                   expected_root="CreateSyncVerificationResponse")
        sync = root.find("SyncVerification")
        assert sync is not None
        echoed = (sync.findtext("Participant"), sync.findtext("KeyType"),
                  (sync.findtext("ParticipantSyncVerifier") or "").lower())
        if echoed != (participant, key_type, vsync.lower()):
            raise DictResponseInvalid("CreateSyncVerificationResponse is about another participant, key type or "
                                      "VSync than the one sent; the answer is not used")
        return dx.parse_sync_verification(root)

    async def create_cid_file(self, participant: str, key_type: str) -> CidFileStatus:
        """createCidSetFile: asks for a file of every CID of (participant, key type); returns its job."""
        body = self._signer.sign(dx.cid_set_file_request(participant, key_type))
        root = await self._request("CreateCidFile", "POST", "cids/files/", body=body,
                                   expected_root="CreateCidSetFileResponse")
        status = dx.parse_cid_set_file(root)
        self._check_pair("CreateCidSetFileResponse", status.participant, status.key_type, participant, key_type)
        return status

    async def get_cid_file(self, file_id: str, participant: str | None = None) -> CidFileStatus:
        """getCidSetFile: status of a CID file job (URL, byte size and SHA-256 once AVAILABLE).

        Args:
            file_id: the DICT's id of the job (an integer, as text).
            participant: ``PI-RequestingParticipant`` (the one that asked for the file); the client's when None.

        Raises:
            BridgeNotFound: no such job (also for an id that is not a number).
        """
        if not is_ascii_digits(file_id):
            raise BridgeNotFound("the DICT's CID file ids are integers; no such CID file job")
        root = await self._request("GetCidFile", "GET", f"cids/files/{file_id}", expected_root="GetCidSetFileResponse",
                                   requesting=participant)
        status = dx.parse_cid_set_file(root)
        if status.job_id != file_id:
            raise DictResponseInvalid("GetCidSetFileResponse is about another CID file than the one asked for")
        return status

    async def list_cid_events(self, participant: str, key_type: str, start: datetime, end: datetime | None,
                              limit: int = MAX_PAGE_SIZE) -> CidEventsPage:
        """listCidSetEvents: one ascending page of CID events with ``start <= Timestamp <= end``.

        Args:
            start: StartTime (inclusive), aware.
            end: EndTime (inclusive, as the DICT defines it), aware; None for no upper bound.
            limit: 1..200.
        """
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE} (DICT rule)")
        params = {"Participant": participant, "KeyType": key_type, "StartTime": dx.format_time(start),
                  "Limit": str(limit)}
        if end is not None:
            params["EndTime"] = dx.format_time(end)
        root = await self._request("ListCidEvents", "GET", "cids/events", params=params,
                                   expected_root="ListCidSetEventsResponse", requesting=participant)
        self._check_pair("ListCidSetEventsResponse", root.findtext("Participant"), root.findtext("KeyType"),
                         participant, key_type)
        page = dx.parse_cid_set_events(root)
        if len(page.events) > limit:
            raise DictResponseInvalid("ListCidSetEventsResponse holds more events than the Limit asked for")
        if any(e.timestamp < start - timedelta(milliseconds=1) or (end is not None and e.timestamp > end)
               for e in page.events):
            raise DictResponseInvalid("ListCidSetEventsResponse holds events outside the asked time range")
        return page

    async def get_entry_by_cid(self, participant: str, key_type: str, cid: str) -> Entry:
        """getEntryByCid: the active entry with that CID.

        Raises:
            BridgeNotFound: no active entry has that CID.
            DictResponseInvalid: the entry is of another participant or key type, or does not hash to ``cid``.
        """
        root = await self._request("GetEntryByCid", "GET", f"cids/entries/{quote(cid.lower(), safe='')}",
                                   expected_root="GetEntryByCidResponse", requesting=participant)
        answered_cid, entry = dx.parse_entry_by_cid(root)
        self._check_pair("GetEntryByCidResponse", entry.participant, entry.key_type, participant, key_type)
        if answered_cid != cid.lower() or entry.cid != cid.lower():
            raise DictResponseInvalid("GetEntryByCidResponse holds an entry whose CID differs from the one asked for")
        return entry

    async def download(self, url: str, byte_size: int, sha256: str) -> AsyncIterator[bytes]:
        """The content of an AVAILABLE CID file, streamed; checked against ``byte_size`` and ``sha256``.

        A 5xx answer or a connection lost mid-file is retried (up to ``download_attempts``) and the
        download resumed with ``Range: bytes=<received>-``; a server that does not resume (no 206 from
        the right offset) is an error, since bytes already yielded cannot be taken back.

        Raises:
            CidFileCorrupt: the content's size or SHA-256 differs from the announced ones (retriable:
                download again).
            BridgeUnavailable: still failing after the attempts.
            DictTlsError, BridgeError: as the other calls.
        """
        session = self._need_session()
        digest, received, attempt = hashlib.sha256(), 0, 0
        while True:
            attempt += 1
            headers = {"Range": f"bytes={received}-"} if received else {}
            try:
                async with session.get(url, headers=headers) as response:
                    if response.status >= 400:  # a 5xx maps to BridgeUnavailable: retried below
                        raise _map_problem(response, await response.read(), "DownloadCidFile")
                    if received and (response.status != 206 or not response.headers.get(
                            "Content-Range", "").startswith(f"bytes {received}-")):
                        raise BridgeError("the CID file server did not resume the download from byte "
                                          f"{received} (HTTP {response.status}); download the file again")
                    async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK):
                        digest.update(chunk)
                        received += len(chunk)
                        if received > byte_size:
                            raise CidFileCorrupt(f"the CID file is longer than the {byte_size} bytes announced")
                        yield chunk
                break
            except (BridgeUnavailable, aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                    aiohttp.ClientOSError, TimeoutError) as exc:
                if isinstance(exc, aiohttp.ClientSSLError):
                    raise _tls_error(exc) from exc
                if attempt >= self.download_attempts:
                    raise BridgeUnavailable(f"CID file download failed after {attempt} attempts at byte {received} "
                                            f"of {byte_size}: {type(exc).__name__}; try again later") from exc
                log.warning("CID file download interrupted at byte %d of %d (%s); resuming (attempt %d of %d)",
                            received, byte_size, type(exc).__name__, attempt + 1, self.download_attempts)
                await asyncio.sleep(min(2.0, 0.1 * 2 ** attempt))
            except aiohttp.ClientSSLError as exc:
                raise _tls_error(exc) from exc
        if received != byte_size or digest.hexdigest() != sha256.lower():
            raise CidFileCorrupt(f"the CID file content ({received} bytes) does not match the {byte_size} bytes and "
                                 "SHA-256 the DICT announced; download it again")

    # ------------------------------------------------------------------ plumbing

    def _need_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("DictApiClient is not started: call start() or use `async with`")
        return self._session

    @staticmethod
    def _check_pair(what: str, got_participant: str | None, got_key_type: str | None, participant: str,
                    key_type: str) -> None:
        if (got_participant, got_key_type) != (participant, key_type):
            raise DictResponseInvalid(f"{what} is about another participant or key type than the one asked for")

    async def _request(self, operation: str, method: str, path: str, *, params: Mapping[str, str] | None = None,
                       body: bytes | None = None, expected_root: str,
                       requesting: str | None = None) -> etree._Element:
        """One exchange: pace, send, map errors, verify the signature, validate, return the signed root."""
        session = self._need_session()
        if operation in POLICY_OF:
            await self.pacer.acquire(operation)
        headers = {"Content-Type": "application/xml; charset=utf-8"} if body is not None else {}
        if requesting is not None:  # the direct or indirect participant the call is about
            headers["PI-RequestingParticipant"] = requesting
        try:
            async with session.request(method, self.base_url + path, params=params, data=body,
                                       headers=headers) as response:
                data = await response.read()
                if response.status >= 400:
                    raise _map_problem(response, data, operation)
                if response.status not in (200, 201):
                    raise BridgeError(f"DICT API {operation} answered HTTP {response.status}, not 200/201")
        except aiohttp.ClientSSLError as exc:
            raise _tls_error(exc) from exc
        except aiohttp.ServerDisconnectedError as exc:
            # Under TLS 1.3 a server that refuses our client certificate just closes the connection.
            raise BridgeUnavailable(f"DICT API {operation}: the server closed the connection without answering; "
                                    "if this repeats, the DICT may be refusing the client certificate "
                                    "VSYNC_DICT_API_TLS_CERT (not issued by a CA it trusts, or expired)") from exc
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise BridgeUnavailable(f"DICT API {operation} cannot be reached ({type(exc).__name__}: "
                                    f"{str(exc)[:120]}); check VSYNC_DICT_API_URL and the network") from exc
        what = f"DICT API {operation} response"
        signed = self._verifier.verify(data, what)
        dx.validate(signed, what, expected_root)
        return signed


def _tls_error(exc: aiohttp.ClientSSLError) -> DictTlsError:
    return DictTlsError(f"mutual TLS with the DICT API failed: {str(exc)[:200]}; check that VSYNC_DICT_API_TLS_CA "
                        "signs the DICT's (unexpired) server certificate and that the DICT accepts "
                        "VSYNC_DICT_API_TLS_CERT")


def _map_problem(response: aiohttp.ClientResponse, data: bytes, operation: str) -> BridgeError:
    """An HTTP error answer of the DICT as the project's exception (see the module docstring)."""
    status = response.status
    problem = dx.parse_problem(data, status)
    text = f"DICT API {operation} answered {status} {problem.type_name or problem.title}"
    if problem.detail:
        text += f": {problem.detail[:160]}"
    error: BridgeError
    if status == 429:
        policy = response.headers.get("PI-RateLimit-ParticipantPolicy") or POLICY_OF.get(operation)
        error = RateLimited(f"{text} (policy {policy}; wait for the bucket to refill)")
        error.policy = policy
        error.retry_after_s = _seconds(response.headers.get("PI-RateLimit-ParticipantReset")
                                       or response.headers.get("Retry-After"))
    elif status >= 500:
        error = BridgeUnavailable(f"{text} (the DICT may be retried later)")
        error.retry_after_s = _seconds(response.headers.get("Retry-After"))
    elif status == 404:
        error = BridgeNotFound(text)
    else:
        error = BridgeError(text)
    error.http_status = status
    return error


def _seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None
