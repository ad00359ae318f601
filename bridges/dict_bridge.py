"""Async client of the Bridge, the participant's gRPC gateway to the DICT (DESIGN 2.6, 4.3).

:class:`BridgeClient` wraps the generated ``DictBridge`` stub over ``grpc.aio``. Before every call
attempt it takes a token from a client-side bucket shaped like the DICT's for that operation
(:mod:`vsync_stream.bridges.pacing`), so a well-behaved client never meets RESOURCE_EXHAUSTED.
Every call has a deadline; gRPC status codes become the project's exception tree
(:func:`~vsync_stream.bridges.bridge_proto.map_rpc_error`), and only errors whose class is
``retriable`` are retried, with jittered exponential backoff bounded in attempts and total time. A
``retry-after-ms`` trailer (sent by the simulator with RESOURCE_EXHAUSTED) is honoured as the
minimum wait. Logs carry the operation, the status code and the attempt, never a Pix key, a tax id
or a name.

The proto/domain conversions and result types live in :mod:`vsync_stream.bridges.bridge_proto`,
the multi-message helpers (CID file download, CID event walk) in
:mod:`vsync_stream.bridges.bridge_streams`; both are re-exported here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import grpc
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from vsync_stream.bridges.bridge_proto import (
    RETRY_AFTER_TRAILER,
    CidEvent,
    CidEventsPage,
    CidFileStatus,
    VerifyResult,
    cid_events_page_from_proto,
    cid_file_status_from_proto,
    datetime_from_proto,
    datetime_to_proto,
    entry_from_proto,
    entry_to_proto,
    key_type_from_proto,
    key_type_to_proto,
    map_rpc_error,
)
from vsync_stream.bridges.bridge_streams import CidEventsWalk, CidFileDownload
from vsync_stream.bridges.generated import vsync_bridge_pb2 as pb
from vsync_stream.bridges.generated import vsync_bridge_pb2_grpc as pb_grpc
from vsync_stream.bridges.pacing import DICT_RATE_LIMITS, Pacer, RateLimit
from vsync_stream.domain.cid import normalise_cid
from vsync_stream.domain.entry import Entry
from vsync_stream.errors import BridgeError, BridgeUnavailable, CidFileFailed, ConfigurationError
from vsync_stream.metrics import BRIDGE_ERRORS, BRIDGE_SECONDS

__all__ = [
    "DICT_RATE_LIMITS", "MAX_PAGE_SIZE", "RETRY_AFTER_TRAILER", "BridgeClient", "CidEvent", "CidEventsPage",
    "CidEventsWalk", "CidFileDownload", "CidFileStatus", "RateLimit", "VerifyResult", "datetime_from_proto",
    "datetime_to_proto", "entry_from_proto", "entry_to_proto", "key_type_from_proto", "key_type_to_proto",
    "map_rpc_error",
]

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_S = 5.0
MAX_PAGE_SIZE = 200  # BCB DICT API, "Eventos de CIDs": Limit <= 200
_T = TypeVar("_T")


class BridgeClient:
    """Async client of the ``DictBridge`` gRPC service; one per process, shared by callers.

    Use ``async with BridgeClient("host:port") as bridge:`` or :meth:`start`/:meth:`stop`. Create
    it in the event loop that uses it (its pacing buckets bind to that loop).

    The DICT limits per participant, not per client: give the pacing the whole budget only when this
    client is the participant's only caller of the Bridge (in the product, the leader's timer and
    reconciler), otherwise share it out through ``rate_limits``.

    Args:
        target: ``host:port`` of the Bridge.
        deadline_s: deadline of each unary call attempt, seconds.
        root_cert_path: PEM of the CA that signs the Bridge's certificate; any TLS path turns
            TLS on (system roots when only the client pair is given).
        private_key_path: PEM private key of the client certificate (mutual TLS).
        cert_chain_path: PEM client certificate chain (mutual TLS), with ``private_key_path``.
        max_attempts: attempts per call including the first (retriable errors only).
        max_retry_s: total time budget of one call's retries, seconds; no sleep goes past it.
        backoff_initial_s: scale of the jittered exponential backoff, seconds.
        backoff_max_s: cap of one backoff sleep, seconds (a server retry-after hint may exceed it).
        download_deadline_s: deadline of a whole CID file download, seconds.
        channel_options: extra gRPC channel options.
        rate_limits: per-RPC overrides of the client-side buckets, merged over
            :data:`~vsync_stream.bridges.pacing.DICT_RATE_LIMITS` (the DICT's published limits);
            None for an RPC turns its pacing off.
        pacing_margin_s: arrival-time spread the pacing tolerates, seconds
            (see :func:`~vsync_stream.bridges.pacing.reserve_tokens`).

    Raises:
        ConfigurationError: a client key without its certificate chain or vice versa.
    """

    def __init__(
        self,
        target: str,
        *,
        deadline_s: float = DEFAULT_DEADLINE_S,
        root_cert_path: str | Path | None = None,
        private_key_path: str | Path | None = None,
        cert_chain_path: str | Path | None = None,
        max_attempts: int = 5,
        max_retry_s: float = 60.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 15.0,
        download_deadline_s: float = 3600.0,
        channel_options: list[tuple[str, Any]] | None = None,
        rate_limits: Mapping[str, RateLimit | None] | None = None,
        pacing_margin_s: float = 1.0,
    ) -> None:
        if (private_key_path is None) != (cert_chain_path is None):
            raise ConfigurationError("mutual TLS needs both private_key_path and cert_chain_path")
        self.target = target
        self.deadline_s = deadline_s
        self.max_attempts = max_attempts
        self.max_retry_s = max_retry_s
        self.download_deadline_s = download_deadline_s
        self._tls_paths = (root_cert_path, private_key_path, cert_chain_path)
        self._backoff = wait_random_exponential(multiplier=backoff_initial_s, max=backoff_max_s)
        self._options = channel_options or []
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.DictBridgeStub | None = None
        self.pacer = Pacer({**DICT_RATE_LIMITS, **(rate_limits or {})}, margin_s=pacing_margin_s)

    async def start(self) -> None:
        """Open the channel (connection happens lazily on the first call).

        Raises:
            ConfigurationError: a TLS file cannot be read.
        """
        if self._channel is not None:
            return
        root, key, chain = (self._read(p) for p in self._tls_paths)
        if any(p is not None for p in self._tls_paths):
            credentials = grpc.ssl_channel_credentials(root_certificates=root, private_key=key,
                                                       certificate_chain=chain)
            self._channel = grpc.aio.secure_channel(self.target, credentials, options=self._options)
        else:
            self._channel = grpc.aio.insecure_channel(self.target, options=self._options)
        self._stub = pb_grpc.DictBridgeStub(self._channel)

    async def stop(self) -> None:
        """Close the channel (calls in flight are cancelled) and store the last budget levels."""
        await self.pacer.close()
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    @staticmethod
    def _read(path: str | Path | None) -> bytes | None:
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"cannot read the Bridge TLS file {path}: {exc.strerror}") from exc

    @property
    def stub(self) -> pb_grpc.DictBridgeStub:
        """The generated stub (for calls this class does not wrap; those are not paced).

        Raises:
            RuntimeError: :meth:`start` was not called.
        """
        if self._stub is None:
            raise RuntimeError("BridgeClient is not started: call start() or use `async with`")
        return self._stub

    # -------------------------------------------------------------- retries and pacing

    def _wait(self, state: RetryCallState) -> float:
        backoff = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        hint = getattr(exc, "retry_after_s", None)
        return max(backoff, hint) if hint else backoff

    def retrying(self, operation: str) -> AsyncRetrying:
        """The retry policy of one call of ``operation`` (used by the stream helpers too)."""
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            code = getattr(exc, "status_code", None)
            log.warning("Bridge %s attempt %d failed (%s, %s); retrying in %.2f s", operation,
                        state.attempt_number, type(exc).__name__, getattr(code, "name", "?"),
                        state.upcoming_sleep)

        return AsyncRetrying(
            retry=retry_if_exception(lambda exc: bool(getattr(exc, "retriable", False))),
            stop=stop_after_attempt(self.max_attempts) | stop_before_delay(self.max_retry_s),
            wait=self._wait,
            before_sleep=before_sleep,
            reraise=True,
        )

    async def _unary(self, operation: str, call: Callable[[], Awaitable[_T]]) -> _T:
        async for attempt in self.retrying(operation):
            with attempt:
                # Every attempt may reach the DICT and spend a token there, so each one takes a token.
                await self.pacer.acquire(operation)
                started = time.perf_counter()
                try:
                    return await call()
                except grpc.aio.AioRpcError as exc:
                    BRIDGE_ERRORS.labels(method=operation, code=exc.code().name).inc()
                    raise map_rpc_error(exc, operation) from exc
                finally:
                    BRIDGE_SECONDS.labels(method=operation).observe(time.perf_counter() - started)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    # -------------------------------------------------------------- operations

    async def verify_sync(self, participant: str, key_type: str, vsync: str) -> VerifyResult:
        """Ask the DICT whether a VSync matches its own (BCB DICT API, "Verificação de sincronismo").

        Args:
            participant: ISPB, 8 digits.
            key_type: ``CPF``, ``CNPJ``, ``PHONE``, ``EMAIL`` or ``EVP``.
            vsync: 64 hex chars.

        Returns:
            OK/NOK and the DICT's verification id.

        Raises:
            ValueError: unknown key type.
            RateLimited: the DICT's bucket (10/min, 50) stayed empty through the retries.
            BridgeUnavailable: the Bridge could not be reached within the retries.
            BridgeError: any other failure, or an answer that is neither OK nor NOK.
        """
        request = pb.VerifySyncRequest(participant=participant, key_type=key_type_to_proto(key_type), vsync=vsync)
        response: pb.VerifySyncResponse = await self._unary(
            "VerifySync", lambda: self.stub.VerifySync(request, timeout=self.deadline_s))
        if response.result not in (pb.VerifySyncResponse.OK, pb.VerifySyncResponse.NOK):
            raise BridgeError("Bridge VerifySync answered neither OK nor NOK")
        result: Literal["OK", "NOK"] = "OK" if response.result == pb.VerifySyncResponse.OK else "NOK"
        verified_at = datetime_from_proto(response.verified_at) if response.HasField("verified_at") else None
        log.info("VSync of %s/%s verified: %s", participant, key_type, result)
        return VerifyResult(result, response.verification_id, verified_at)

    async def create_cid_file(self, participant: str, key_type: str) -> str:
        """Ask for a file of all CIDs of (participant, key type); rate limit 40/day, bucket 200.

        Returns:
            The job id, for :meth:`get_cid_file`, :meth:`wait_for_cid_file` and :meth:`download_cid_file`.

        Raises:
            ValueError, RateLimited, BridgeUnavailable, BridgeError: as :meth:`verify_sync`.
        """
        request = pb.CreateCidFileRequest(participant=participant, key_type=key_type_to_proto(key_type))
        response: pb.CreateCidFileResponse = await self._unary(
            "CreateCidFile", lambda: self.stub.CreateCidFile(request, timeout=self.deadline_s))
        if not response.job_id:
            raise BridgeError("Bridge CreateCidFile answered without a job id")
        return response.job_id

    async def get_cid_file(self, job_id: str) -> CidFileStatus:
        """Status of a CID file job; rate limit 10/min, bucket 50.

        Returns:
            The status; URL, byte size and SHA-256 (lower-cased) when AVAILABLE.

        Raises:
            BridgeNotFound: no such job.
            RateLimited, BridgeUnavailable: as :meth:`verify_sync`.
            BridgeError: any other failure, or a status without a value or with a malformed SHA-256.
        """
        request = pb.GetCidFileRequest(job_id=job_id)
        response: pb.GetCidFileResponse = await self._unary(
            "GetCidFile", lambda: self.stub.GetCidFile(request, timeout=self.deadline_s))
        try:
            return cid_file_status_from_proto(response, job_id)
        except ValueError as exc:
            raise BridgeError(f"Bridge GetCidFile answered a malformed status: {exc}") from exc

    async def wait_for_cid_file(self, job_id: str, *, poll_interval_s: float = 10.0,
                                timeout_s: float = 3600.0) -> CidFileStatus:
        """Poll :meth:`get_cid_file` until the job is AVAILABLE.

        The default interval stays within the GetCidFile refill rate (10/min); polls are paced anyway.

        Args:
            job_id: from :meth:`create_cid_file`.
            poll_interval_s: pause between polls, seconds.
            timeout_s: give up after this long, seconds.

        Returns:
            The AVAILABLE status (URL, byte size, SHA-256).

        Raises:
            CidFileFailed: the DICT ended the job as ERROR or UNAVAILABLE: request a new file.
            BridgeUnavailable: not AVAILABLE within ``timeout_s``.
            BridgeNotFound, RateLimited, BridgeError: as :meth:`get_cid_file`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            status = await self.get_cid_file(job_id)
            if status.status == "AVAILABLE":
                return status
            if status.status in ("ERROR", "UNAVAILABLE"):
                raise CidFileFailed(f"the DICT ended CID file job {job_id} as {status.status}; request a new file")
            if loop.time() + poll_interval_s > deadline:
                raise BridgeUnavailable(f"CID file job {job_id} is still {status.status} after {timeout_s:.0f} s; "
                                        "poll it again later or request a new file")
            await asyncio.sleep(poll_interval_s)

    def download_cid_file(self, job_id: str, *, expected_byte_size: int | None = None,
                          expected_sha256: str | None = None) -> CidFileDownload:
        """Stream the content of an AVAILABLE CID file (``async for chunk in ...``, or ``.cids()``).

        Args:
            job_id: an AVAILABLE job.
            expected_byte_size: size from :meth:`get_cid_file`, bytes; checked when given.
            expected_sha256: SHA-256 from :meth:`get_cid_file`, 64 hex (any case); checked when given.

        Returns:
            An async iterator of byte chunks (lines of 65 bytes may span chunks). Once the stream
            ends it checks the size and SHA-256 announced in the first message (and the expected
            ones) and raises :class:`~vsync_stream.errors.CidFileCorrupt` on a mismatch: treat the
            content as provisional until the iteration ends without error.
        """
        return CidFileDownload(self, job_id, expected_byte_size=expected_byte_size, expected_sha256=expected_sha256)

    async def list_cid_events(self, participant: str, key_type: str, start_time: datetime,
                              end_time: datetime | None = None, limit: int = MAX_PAGE_SIZE) -> CidEventsPage:
        """One page of the DICT's CID event log, ascending; rate limit 20/min, bucket 100.

        Args:
            participant: ISPB, 8 digits.
            key_type: one of the five key types.
            start_time: inclusive, aware datetime (pages overlap on their boundary timestamp).
            end_time: exclusive, aware datetime; None for no upper bound.
            limit: events per page, 1..200 (BCB DICT API, "Eventos de CIDs").

        Returns:
            The page: events, ``has_more_elements`` and the VSyncs after its first and last event.

        Raises:
            ValueError: unknown key type, naive datetime, or ``limit`` outside 1..200.
            RateLimited, BridgeUnavailable, BridgeError: as :meth:`verify_sync`.
        """
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE} (DICT rule)")
        request = pb.ListCidEventsRequest(participant=participant, key_type=key_type_to_proto(key_type),
                                          start_time=datetime_to_proto(start_time), limit=limit)
        if end_time is not None:
            request.end_time.CopyFrom(datetime_to_proto(end_time))
        response: pb.ListCidEventsResponse = await self._unary(
            "ListCidEvents", lambda: self.stub.ListCidEvents(request, timeout=self.deadline_s))
        try:
            return cid_events_page_from_proto(response)
        except ValueError as exc:
            raise BridgeError(f"Bridge ListCidEvents answered a malformed page: {exc}") from exc

    def iter_cid_events(self, participant: str, key_type: str, since: datetime, until: datetime | None = None,
                        *, page_size: int = MAX_PAGE_SIZE) -> CidEventsWalk:
        """Every CID event of (participant, key type) in ``[since, until)``, in order, each once.

        Walks the pages of :meth:`list_cid_events` and drops the events a page repeats from the
        previous one (the start time is inclusive, so consecutive pages overlap on their boundary
        timestamp). Use ``async for event in client.iter_cid_events(...)``; afterwards the walk's
        ``vsync_after_last`` is the DICT's VSync after the last event.

        Args:
            participant: ISPB, 8 digits.
            key_type: one of the five key types.
            since: inclusive, aware datetime.
            until: exclusive, aware datetime; None for no upper bound.
            page_size: events per page, 2..200.

        Raises:
            ValueError: ``page_size`` outside 2..200 (at once); unknown key type or naive datetime
                (while iterating).
            BridgeError: while iterating, ``page_size`` or more events share one timestamp, so the
                log cannot be paged past it (take BACEN's full path, the CID file), or a page is out
                of order.
            RateLimited, BridgeUnavailable: while iterating, as :meth:`list_cid_events`.
        """
        if not 2 <= page_size <= MAX_PAGE_SIZE:
            # Pages overlap by at least one event, so a page of one never gets past its start.
            raise ValueError(f"page_size must be between 2 and {MAX_PAGE_SIZE} (DICT rule: at most 200)")
        return CidEventsWalk(self.list_cid_events, participant, key_type, since, until, page_size)

    async def get_entry_by_cid(self, participant: str, key_type: str, cid: str) -> Entry:
        """The active entry with that CID, RequestId included; rate limit 1200/min, bucket 36000.

        Args:
            participant: ISPB, 8 digits.
            key_type: one of the five key types.
            cid: 64 hex chars, any case.

        Returns:
            The entry exactly as the DICT holds it; its :func:`~vsync_stream.domain.cid.compute_cid`
            is ``cid``.

        Raises:
            ValueError: unknown key type, or ``cid`` is not 64 hex chars.
            BridgeNotFound: no active entry of (participant, key type) has that CID.
            RateLimited, BridgeUnavailable: as :meth:`verify_sync`.
            BridgeError: any other failure, or an entry that is malformed or does not hash to ``cid``.
        """
        cid = normalise_cid(cid)
        request = pb.GetEntryByCidRequest(participant=participant, key_type=key_type_to_proto(key_type), cid=cid)
        response: pb.GetEntryByCidResponse = await self._unary(
            "GetEntryByCid", lambda: self.stub.GetEntryByCid(request, timeout=self.deadline_s))
        try:
            entry = entry_from_proto(response.entry)
            rebuilt = entry.cid
        except ValueError as exc:
            raise BridgeError(f"Bridge GetEntryByCid answered a malformed entry: {exc}") from exc
        if rebuilt != cid:
            raise BridgeError("Bridge GetEntryByCid answered an entry whose CID differs from the one asked for; "
                              "the Bridge or the DICT changed a hashed field")
        return entry
