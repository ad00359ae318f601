"""Async client of the Bridge, the participant's gRPC gateway to the DICT (DESIGN 2.6, 4.3).

:class:`BridgeClient` wraps the generated ``DictBridge`` stub over ``grpc.aio``. Every call has a
deadline; gRPC status codes become the project's exception tree (RESOURCE_EXHAUSTED →
:class:`~vsync_stream.errors.RateLimited`, UNAVAILABLE and DEADLINE_EXCEEDED →
:class:`~vsync_stream.errors.BridgeUnavailable`, NOT_FOUND → :class:`~vsync_stream.errors.BridgeNotFound`,
anything else → :class:`~vsync_stream.errors.BridgeError`), and only errors whose class is
``retriable`` are retried, with jittered exponential backoff bounded in attempts and total time. A
``retry-after-ms`` trailer (sent by the simulator with RESOURCE_EXHAUSTED) is honoured as the
minimum wait. Logs carry the operation, the status code and the attempt, never a Pix key, a tax id
or a name.

The proto/domain conversions live in :mod:`vsync_stream.bridges.bridge_proto` (re-exported here).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
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
    datetime_from_proto,
    datetime_to_proto,
    entry_from_proto,
    entry_to_proto,
    key_type_from_proto,
    key_type_to_proto,
)
from vsync_stream.bridges.generated import vsync_bridge_pb2 as pb
from vsync_stream.bridges.generated import vsync_bridge_pb2_grpc as pb_grpc
from vsync_stream.domain.entry import Entry
from vsync_stream.errors import BridgeError, BridgeNotFound, BridgeUnavailable, ConfigurationError, RateLimited

__all__ = [
    "BridgeClient", "CidEvent", "CidEventsPage", "CidFileDownload", "CidFileStatus", "VerifyResult",
    "datetime_from_proto", "datetime_to_proto", "entry_from_proto", "entry_to_proto", "key_type_from_proto",
    "key_type_to_proto", "map_rpc_error",
]

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_S = 5.0
RETRY_AFTER_TRAILER = "retry-after-ms"
_T = TypeVar("_T")

# ------------------------------------------------------------------ results


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The DICT's answer to a sync verification."""

    result: Literal["OK", "NOK"]
    verification_id: str
    verified_at: datetime | None = None

    @property
    def ok(self) -> bool:
        """True when the DICT answered OK."""
        return self.result == "OK"


@dataclass(frozen=True, slots=True)
class CidFileStatus:
    """Status of a CID file job; ``url``, ``byte_size`` (bytes) and ``sha256`` (64 hex) once AVAILABLE."""

    job_id: str
    status: Literal["REQUESTED", "PROCESSING", "AVAILABLE", "UNAVAILABLE", "ERROR"]
    url: str | None
    byte_size: int | None
    sha256: str | None
    participant: str | None = None
    key_type: str | None = None
    requested_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class CidEvent:
    """One entry of the DICT's CID event log: a CID ADDED to or REMOVED from a participant's set."""

    cid: str
    type: Literal["ADDED", "REMOVED"]
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class CidEventsPage:
    """A page of CID events, ascending; VSyncs (64 hex) after its first and last event."""

    events: list[CidEvent]
    has_more_elements: bool
    vsync_after_first: str | None
    vsync_after_last: str | None


# ------------------------------------------------------------------ errors


def map_rpc_error(exc: grpc.aio.AioRpcError, operation: str) -> BridgeError:
    """Turn a gRPC error into the project's exception (raise it ``from exc``).

    Args:
        exc: the gRPC error.
        operation: the RPC name, for the message.

    Returns:
        :class:`RateLimited` (with ``retry_after_s`` when the server sent a hint),
        :class:`BridgeUnavailable`, :class:`BridgeNotFound` or :class:`BridgeError`.
    """
    code = exc.code()
    message = f"Bridge {operation} failed with {code.name}: {(exc.details() or '')[:200]}"
    error: BridgeError
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        error = RateLimited(message + " (DICT rate limit; wait for the bucket to refill)")
        error.retry_after_s = _retry_after_s(exc)  # type: ignore[attr-defined]
    elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        error = BridgeUnavailable(message + " (check that the Bridge is up and reachable)")
    elif code is grpc.StatusCode.NOT_FOUND:
        error = BridgeNotFound(message)
    else:
        error = BridgeError(message)
    error.status_code = code  # type: ignore[attr-defined]
    return error


def _retry_after_s(exc: grpc.aio.AioRpcError) -> float | None:
    for key, value in exc.trailing_metadata() or ():
        if key == RETRY_AFTER_TRAILER:
            try:
                return max(0.0, float(value) / 1000)
            except (TypeError, ValueError):
                return None
    return None


# ------------------------------------------------------------------ client


class BridgeClient:
    """Async client of the ``DictBridge`` gRPC service; one per process, shared by callers.

    Use ``async with BridgeClient("host:port") as bridge:`` or :meth:`start`/:meth:`stop`.

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
        """Close the channel; calls in flight are cancelled."""
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
        """The generated stub (for calls this class does not wrap).

        Raises:
            RuntimeError: :meth:`start` was not called.
        """
        if self._stub is None:
            raise RuntimeError("BridgeClient is not started: call start() or use `async with`")
        return self._stub

    # -------------------------------------------------------------- retries

    def _wait(self, state: RetryCallState) -> float:
        backoff = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        hint = getattr(exc, "retry_after_s", None)
        return max(backoff, hint) if hint else backoff

    def _retrying(self, operation: str) -> AsyncRetrying:
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
        async for attempt in self._retrying(operation):
            with attempt:
                try:
                    return await call()
                except grpc.aio.AioRpcError as exc:
                    raise map_rpc_error(exc, operation) from exc
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
        """Ask for a file of all CIDs of (participant, key type); rate limit 40/day, 200.

        Returns:
            The job id, for :meth:`get_cid_file` and :meth:`download_cid_file`.

        Raises:
            ValueError, RateLimited, BridgeUnavailable, BridgeError: as :meth:`verify_sync`.
        """
        request = pb.CreateCidFileRequest(participant=participant, key_type=key_type_to_proto(key_type))
        response: pb.CreateCidFileResponse = await self._unary(
            "CreateCidFile", lambda: self.stub.CreateCidFile(request, timeout=self.deadline_s))
        return response.job_id

    async def get_cid_file(self, job_id: str) -> CidFileStatus:
        """Status of a CID file job; rate limit 10/min, 50.

        Raises:
            BridgeNotFound: no such job.
            RateLimited, BridgeUnavailable, BridgeError: as :meth:`verify_sync`.
        """
        request = pb.GetCidFileRequest(job_id=job_id)
        r: pb.GetCidFileResponse = await self._unary(
            "GetCidFile", lambda: self.stub.GetCidFile(request, timeout=self.deadline_s))
        if r.status == pb.GetCidFileResponse.STATUS_UNSPECIFIED:
            raise BridgeError("Bridge GetCidFile answered without a status")
        available = r.status == pb.GetCidFileResponse.AVAILABLE
        return CidFileStatus(
            job_id=r.job_id or job_id,
            status=pb.GetCidFileResponse.Status.Name(r.status),  # type: ignore[arg-type]
            url=r.url if available else None,
            byte_size=r.byte_size if available else None,
            sha256=r.sha256.lower() if available else None,
            participant=r.participant or None,
            key_type=key_type_from_proto(r.key_type) if r.key_type else None,
            requested_at=datetime_from_proto(r.requested_at) if r.HasField("requested_at") else None,
        )

    def download_cid_file(self, job_id: str) -> CidFileDownload:
        """Stream the content of an AVAILABLE CID file.

        Returns:
            An async iterator of byte chunks (lines of 65 bytes may span chunks); it checks the
            byte size and SHA-256 announced in the first message once the stream ends.
        """
        return CidFileDownload(self, job_id)

    async def list_cid_events(self, participant: str, key_type: str, start_time: datetime, end_time: datetime,
                              limit: int = 200) -> CidEventsPage:
        """One page of the DICT's CID event log, ascending; rate limit 20/min, 100.

        Args:
            participant: ISPB, 8 digits.
            key_type: one of the five key types.
            start_time: inclusive, aware datetime (pages overlap on their boundary timestamp).
            end_time: aware datetime.
            limit: events per page, at most 200.

        Raises:
            ValueError: unknown key type, naive datetime, or ``limit`` outside 1..200.
            RateLimited, BridgeUnavailable, BridgeError: as :meth:`verify_sync`.
        """
        if not 1 <= limit <= 200:
            raise ValueError("limit must be between 1 and 200 (DICT rule)")
        request = pb.ListCidEventsRequest(participant=participant, key_type=key_type_to_proto(key_type),
                                          start_time=datetime_to_proto(start_time),
                                          end_time=datetime_to_proto(end_time), limit=limit)
        r: pb.ListCidEventsResponse = await self._unary(
            "ListCidEvents", lambda: self.stub.ListCidEvents(request, timeout=self.deadline_s))
        events = [
            CidEvent(e.cid.lower(), pb.CidEvent.Type.Name(e.type),  # type: ignore[arg-type]
                     datetime_from_proto(e.timestamp))
            for e in r.events
        ]
        return CidEventsPage(events, r.has_more_elements, r.vsync_after_first.lower() or None,
                             r.vsync_after_last.lower() or None)

    async def get_entry_by_cid(self, participant: str, key_type: str, cid: str) -> Entry:
        """The active entry with that CID, RequestId included; rate limit 1200/min, 36000.

        Raises:
            BridgeNotFound: no active entry of (participant, key type) has that CID.
            ValueError, RateLimited, BridgeUnavailable, BridgeError: as :meth:`verify_sync`.
        """
        request = pb.GetEntryByCidRequest(participant=participant, key_type=key_type_to_proto(key_type), cid=cid)
        r: pb.GetEntryByCidResponse = await self._unary(
            "GetEntryByCid", lambda: self.stub.GetEntryByCid(request, timeout=self.deadline_s))
        try:
            return entry_from_proto(r.entry)
        except ValueError as exc:
            raise BridgeError(f"Bridge GetEntryByCid answered a malformed entry: {exc}") from exc


class CidFileDownload:
    """Async iterator over the byte chunks of one CID file download (see ``download_cid_file``).

    Opening the stream is retried like a unary call; once data flows, an error ends the download
    (start it again). ``byte_size`` (bytes) and ``sha256`` (64 hex) are set from the first message.

    Raises (while iterating):
        BridgeNotFound: no such job; BridgeError: the content does not match the announced size or
        SHA-256, or the stream broke; RateLimited, BridgeUnavailable: as for unary calls.
    """

    def __init__(self, client: BridgeClient, job_id: str) -> None:
        self._client = client
        self.job_id = job_id
        self.byte_size: int | None = None
        self.sha256: str | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        client, operation = self._client, "DownloadCidFile"
        request = pb.DownloadCidFileRequest(job_id=self.job_id)
        call: Any = None
        first: Any = None
        async for attempt in client._retrying(operation):
            with attempt:
                call = client.stub.DownloadCidFile(request, timeout=client.download_deadline_s)
                try:
                    first = await call.read()
                except grpc.aio.AioRpcError as exc:
                    call.cancel()
                    raise map_rpc_error(exc, operation) from exc
        try:
            if first is grpc.aio.EOF:
                raise BridgeError("Bridge DownloadCidFile sent no header message")
            self.byte_size, self.sha256 = first.byte_size, first.sha256.lower()
            digest, size, message = hashlib.sha256(), 0, first
            while message is not grpc.aio.EOF:
                if message.data:
                    digest.update(message.data)
                    size += len(message.data)
                    yield message.data
                try:
                    message = await call.read()
                except grpc.aio.AioRpcError as exc:
                    raise map_rpc_error(exc, operation) from exc
            if size != self.byte_size or digest.hexdigest() != self.sha256:
                raise BridgeError(
                    f"CID file {self.job_id} is corrupt: got {size} bytes, expected {self.byte_size}, "
                    "or the SHA-256 differs; download it again")
        finally:
            call.cancel()
