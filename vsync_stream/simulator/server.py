"""The DICT simulator: a real gRPC server speaking the Bridge API over a :class:`DictModel`.

It implements every Bridge operation (DESIGN 2.6, 3.5): sync verification, CID files (asynchronous
jobs, see :mod:`vsync_stream.simulator.cid_files`), the paged CID event log and entry by CID. It
enforces the DICT's rate limits with token buckets, answering RESOURCE_EXHAUSTED with a
``retry-after-ms`` trailer when a bucket is empty, and has fault hooks: injected latency, an
"unavailable" switch, bursts of UNAVAILABLE answers, and CID file outcomes and corruption.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from vsync_stream.bridges.bridge_proto import RETRY_AFTER_TRAILER, entry_to_proto, key_type_from_proto
from vsync_stream.bridges.generated import vsync_bridge_pb2 as pb
from vsync_stream.bridges.generated import vsync_bridge_pb2_grpc as pb_grpc
from vsync_stream.bridges.pacing import DICT_RATE_LIMITS, RateLimit
from vsync_stream.domain.cid import normalise_cid
from vsync_stream.domain.keys import KeyType, is_ispb
from vsync_stream.simulator.cid_files import DEFAULT_CHUNK_BYTES, CidFileJob, CidFileStore
from vsync_stream.simulator.model import DictModel

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TokenBucket:
    """A token bucket: ``capacity`` tokens, refilled continuously at ``refill_per_s`` tokens/second.

    Starts full. ``clock`` returns seconds (monotonic); inject one to test without sleeping.
    """

    capacity: float
    refill_per_s: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(init=False)
    _last: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.capacity
        self._last = self.clock()

    @classmethod
    def per_minute(cls, per_minute: float, capacity: float) -> TokenBucket:
        """A bucket refilled at ``per_minute`` tokens per minute, as the DICT states its limits."""
        return cls.from_limit(RateLimit.per_minute(per_minute, capacity))

    @classmethod
    def from_limit(cls, limit: RateLimit) -> TokenBucket:
        """A full bucket of the given shape (the client paces with the same :class:`RateLimit`)."""
        return cls(limit.capacity, limit.refill_per_s)

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.refill_per_s)
        self._last = now

    def try_take(self) -> bool:
        """Take one token if there is one; True when taken."""
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def seconds_until_token(self) -> float:
        """Seconds until one token is available (0 when one is); ``inf`` when the bucket never refills."""
        self._refill()
        missing = 1.0 - self.tokens
        if missing <= 0:
            return 0.0
        return missing / self.refill_per_s if self.refill_per_s > 0 else math.inf


def dict_rate_limits() -> dict[str, TokenBucket]:
    """Fresh buckets with the DICT's published limits per RPC (DESIGN 2.6; BCB DICT API,
    "Limitação de requisições"). One set per simulator: the DICT limits per calling participant,
    and a simulator stands behind one participant's Bridge.
    """
    return {operation: TokenBucket.from_limit(limit) for operation, limit in DICT_RATE_LIMITS.items()}


class DictSimulator:
    """A running DICT behind a Bridge: a ``grpc.aio`` server of ``DictBridge`` over a model.

    The fault hooks are plain attributes or methods, changeable while serving: ``latency_s``
    (seconds added before every answer), ``unavailable`` (answer UNAVAILABLE to everything),
    :meth:`inject_unavailable` (a burst: the next N calls answer UNAVAILABLE), and on
    ``cid_files`` the ``outcome`` of new CID file jobs and the ``corruption`` of downloads.
    ``rejections`` counts RESOURCE_EXHAUSTED answers per RPC name, ``calls`` every call received,
    ``injected`` the UNAVAILABLE answers given by the fault hooks.

    Args:
        model: the DICT state to serve; a new empty one when None.
        rate_limits: bucket per RPC name; the DICT's limits (:func:`dict_rate_limits`) when None.
            An RPC without a bucket is not limited.
        latency_s: initial injected latency, seconds.
        unavailable: initial state of the unavailable switch.
        server_credentials: serve TLS with these credentials; plaintext when None.
        cid_file_delay_s: seconds from a CID file request to AVAILABLE.
        cid_file_dir: directory of CID files; a temporary one (deleted on stop) when None.
        cid_file_upper_fraction: share of CID file lines in upper-case hex, 0..1.
        cid_file_chunk_bytes: bytes per DownloadCidFile message.
        seed: seed of the CID files' shuffle and case choice; random when None.
    """

    def __init__(
        self,
        model: DictModel | None = None,
        *,
        rate_limits: Mapping[str, TokenBucket] | None = None,
        latency_s: float = 0.0,
        unavailable: bool = False,
        server_credentials: grpc.ServerCredentials | None = None,
        cid_file_delay_s: float = 0.5,
        cid_file_dir: str | Path | None = None,
        cid_file_upper_fraction: float = 0.25,
        cid_file_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        seed: int | None = None,
    ) -> None:
        self.model = model if model is not None else DictModel()
        self.rate_limits = dict(rate_limits) if rate_limits is not None else dict_rate_limits()
        self.latency_s = latency_s
        self.unavailable = unavailable
        self.cid_files = CidFileStore(cid_file_dir, delay_s=cid_file_delay_s, upper_fraction=cid_file_upper_fraction,
                                      chunk_bytes=cid_file_chunk_bytes, seed=seed)
        self.rejections: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self._bursts: Counter[str] = Counter()  # RPC name (or "*" for any) -> UNAVAILABLE answers left
        self._credentials = server_credentials
        self._server: grpc.aio.Server | None = None
        self.host: str | None = None
        self.port: int | None = None

    @property
    def target(self) -> str:
        """``host:port`` to give a :class:`~vsync_stream.bridges.dict_bridge.BridgeClient`.

        Raises:
            RuntimeError: the server is not started.
        """
        if self.port is None:
            raise RuntimeError("DictSimulator is not started")
        return f"{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Bind and start serving.

        Args:
            host: interface to bind.
            port: TCP port; 0 picks a free one.

        Returns:
            The bound port.

        Raises:
            RuntimeError: already started, or the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("DictSimulator is already started")
        server = grpc.aio.server()
        pb_grpc.add_DictBridgeServicer_to_server(_Servicer(self), server)
        address = f"{host}:{port}"
        try:
            bound = (server.add_secure_port(address, self._credentials) if self._credentials
                     else server.add_insecure_port(address))
        except RuntimeError as exc:
            raise RuntimeError(f"cannot bind the DICT simulator to {address}: {exc}") from exc
        await server.start()
        self._server, self.host, self.port = server, host, bound
        log.info("DICT simulator serving on %s:%d", host, bound)
        return bound

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop serving (calls in flight get ``grace_s`` seconds; cancelled at once when None) and
        delete the CID files."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace_s)
            self.port = None
        await self.cid_files.close()

    async def __aenter__(self) -> Self:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def inject_unavailable(self, calls: int, operation: str | None = None) -> None:
        """Fault hook: the next ``calls`` calls (of ``operation``, or of any RPC when None) answer
        UNAVAILABLE before reaching the rate limit, as a DICT outage would."""
        self._bursts[operation or "*"] += calls

    def _take_burst(self, operation: str) -> bool:
        for key in (operation, "*"):
            if self._bursts[key] > 0:
                self._bursts[key] -= 1
                return True
        return False

    async def admit(self, operation: str, context: grpc.aio.ServicerContext) -> None:
        """Apply the fault hooks and the rate limit of ``operation`` before answering.

        Aborts the call (raises inside gRPC) with UNAVAILABLE when switched off or in a burst, or
        RESOURCE_EXHAUSTED with a ``retry-after-ms`` trailer when the bucket is empty.
        """
        self.calls[operation] += 1
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        if self.unavailable or self._take_burst(operation):
            self.injected[operation] += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the DICT is unavailable (simulated)")
        bucket = self.rate_limits.get(operation)
        if bucket is not None and not bucket.try_take():
            self.rejections[operation] += 1
            wait = bucket.seconds_until_token()
            wait_ms = str(math.ceil(wait * 1000)) if math.isfinite(wait) else str(2**31)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"rate limit of {operation} exceeded (token bucket empty)",
                                trailing_metadata=((RETRY_AFTER_TRAILER, wait_ms),))


MAX_PAGE_SIZE = 200  # BCB DICT API, "Eventos de CIDs": Limit <= 200


class _Servicer(pb_grpc.DictBridgeServicer):
    """Adapter from gRPC calls to the simulator's model and CID file store."""

    def __init__(self, simulator: DictSimulator) -> None:
        self._sim = simulator

    async def VerifySync(self, request: pb.VerifySyncRequest,  # noqa: N802 (gRPC method name)
                         context: grpc.aio.ServicerContext) -> pb.VerifySyncResponse:
        await self._sim.admit("VerifySync", context)
        key_type = await _key_type(request.key_type, context)
        vsync = request.vsync
        if len(vsync) != 64 or any(c not in "0123456789abcdefABCDEF" for c in vsync):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "vsync must be 64 hex characters")
        await _participant(request.participant, context)
        record = self._sim.model.check_sync(request.participant, key_type, vsync)
        log.info("VerifySync %s/%s: %s", request.participant, key_type, record.result)
        response = pb.VerifySyncResponse(
            result=pb.VerifySyncResponse.OK if record.result == "OK" else pb.VerifySyncResponse.NOK,
            verification_id=record.verification_id,
        )
        response.verified_at.FromMilliseconds(record.verified_at_ms)
        return response

    async def CreateCidFile(self, request: pb.CreateCidFileRequest,  # noqa: N802
                            context: grpc.aio.ServicerContext) -> pb.CreateCidFileResponse:
        await self._sim.admit("CreateCidFile", context)
        key_type = await _key_type(request.key_type, context)
        participant = await _participant(request.participant, context)
        model = self._sim.model
        job = self._sim.cid_files.create(participant, key_type, model.cid_snapshot(participant, key_type),
                                         model.now_ms())
        return pb.CreateCidFileResponse(job_id=job.job_id)

    async def GetCidFile(self, request: pb.GetCidFileRequest,  # noqa: N802
                         context: grpc.aio.ServicerContext) -> pb.GetCidFileResponse:
        await self._sim.admit("GetCidFile", context)
        store = self._sim.cid_files
        job = await self._job(request.job_id, context)
        status = store.status(job)
        response = pb.GetCidFileResponse(job_id=job.job_id, status=pb.GetCidFileResponse.Status.Value(status),
                                         participant=job.participant,
                                         key_type=pb.KeyType.Value("KEY_TYPE_" + job.key_type))
        response.requested_at.FromMilliseconds(job.requested_at_ms)
        if status == "AVAILABLE":
            sha256 = store.announced_sha256(job)
            response.url = job.path.as_uri()
            response.byte_size = job.byte_size or 0
            # The DICT may write hex in upper case (DESIGN 2.6); exercise the client's normalising.
            response.sha256 = sha256.upper() if store.upper_fraction > 0 else sha256
        return response

    async def DownloadCidFile(self, request: pb.DownloadCidFileRequest,  # noqa: N802
                              context: grpc.aio.ServicerContext) -> AsyncIterator[pb.CidFileChunk]:
        await self._sim.admit("DownloadCidFile", context)
        store = self._sim.cid_files
        job = await self._job(request.job_id, context)
        status = store.status(job)
        if status != "AVAILABLE":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"CID file job is {status}; poll GetCidFile until it is AVAILABLE")
        header: pb.CidFileChunk | None = pb.CidFileChunk(byte_size=job.byte_size or 0,
                                                         sha256=store.announced_sha256(job))
        async for data in store.chunks(job):
            if header is not None:
                header.data = data
                yield header
                header = None
            else:
                yield pb.CidFileChunk(data=data)
        if header is not None:  # an empty file: the header alone
            yield header

    async def ListCidEvents(self, request: pb.ListCidEventsRequest,  # noqa: N802
                            context: grpc.aio.ServicerContext) -> pb.ListCidEventsResponse:
        await self._sim.admit("ListCidEvents", context)
        key_type = await _key_type(request.key_type, context)
        participant = await _participant(request.participant, context)
        limit = request.limit or MAX_PAGE_SIZE  # unset means the largest page
        if not 1 <= limit <= MAX_PAGE_SIZE:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"limit must be between 1 and {MAX_PAGE_SIZE}")
        start_ms = _ceil_ms(request.start_time)
        end_ms = _ceil_ms(request.end_time) if request.HasField("end_time") else None
        if end_ms is not None and end_ms < start_ms:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "end_time is before start_time")
        events, more = self._sim.model.cid_log_page(participant, key_type, start_ms, end_ms, limit)
        response = pb.ListCidEventsResponse(has_more_elements=more)
        for event in events:
            message = response.events.add(cid=event.cid, type=pb.CidEvent.Type.Value(event.type))
            message.timestamp.FromMilliseconds(event.timestamp_ms)
        if events:
            response.vsync_after_first = events[0].vsync_after
            response.vsync_after_last = events[-1].vsync_after
        return response

    async def GetEntryByCid(self, request: pb.GetEntryByCidRequest,  # noqa: N802
                            context: grpc.aio.ServicerContext) -> pb.GetEntryByCidResponse:
        await self._sim.admit("GetEntryByCid", context)
        key_type = await _key_type(request.key_type, context)
        participant = await _participant(request.participant, context)
        try:
            cid = normalise_cid(request.cid)
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "cid must be 64 hex characters")
            raise  # pragma: no cover (abort raises)
        entry = self._sim.model.entry_by_cid(participant, key_type, cid)
        if entry is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no active entry of this participant and key type "
                                "has that CID")
            raise AssertionError("unreachable")  # pragma: no cover (abort raises)
        try:
            message = entry_to_proto(entry)
        except ValueError:
            await context.abort(grpc.StatusCode.INTERNAL, "the entry cannot be represented in the Bridge proto")
            raise  # pragma: no cover (abort raises)
        return pb.GetEntryByCidResponse(entry=message, cid=cid)

    async def _job(self, job_id: str, context: grpc.aio.ServicerContext) -> CidFileJob:
        job = self._sim.cid_files.get(job_id)
        if job is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such CID file job")
            raise AssertionError("unreachable")  # pragma: no cover (abort raises)
        return job


def _ceil_ms(stamp: Timestamp) -> int:
    """A Timestamp as epoch milliseconds, rounded up: the log's times are whole milliseconds, so
    ``t >= start`` and ``t < end`` hold for a whole-ms ``t`` exactly when they hold against the
    rounded-up bound."""
    return stamp.seconds * 1000 + -(-stamp.nanos // 1_000_000)


async def _participant(value: str, context: grpc.aio.ServicerContext) -> str:
    if not is_ispb(value):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "participant must be an 8-digit ISPB")
    return value


async def _key_type(value: int, context: grpc.aio.ServicerContext) -> str:
    try:
        return KeyType(key_type_from_proto(value)).value
    except ValueError:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "key_type must be one of CPF, CNPJ, PHONE, EMAIL, EVP")
        raise  # pragma: no cover (abort raises)


__all__ = ["DictSimulator", "TokenBucket", "dict_rate_limits"]
