"""The DICT simulator: a real gRPC server speaking the Bridge API over a :class:`DictModel`.

It enforces the DICT's rate limits with token buckets (DESIGN 2.6), answering RESOURCE_EXHAUSTED
with a ``retry-after-ms`` trailer when a bucket is empty, and has fault hooks: injected latency
and an "unavailable" switch. VerifySync is implemented; the CID file, CID event and entry-by-CID
RPCs answer UNIMPLEMENTED for now.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import grpc

from vsync_stream.bridges.bridge_proto import key_type_from_proto
from vsync_stream.bridges.dict_bridge import RETRY_AFTER_TRAILER
from vsync_stream.bridges.generated import vsync_bridge_pb2 as pb
from vsync_stream.bridges.generated import vsync_bridge_pb2_grpc as pb_grpc
from vsync_stream.domain.keys import KeyType
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
        return cls(capacity, per_minute / 60.0)

    @classmethod
    def per_day(cls, per_day: float, capacity: float) -> TokenBucket:
        """A bucket refilled at ``per_day`` tokens per day."""
        return cls(capacity, per_day / 86_400.0)

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
    return {
        "VerifySync": TokenBucket.per_minute(10, 50),
        "CreateCidFile": TokenBucket.per_day(40, 200),
        "GetCidFile": TokenBucket.per_minute(10, 50),
        "ListCidEvents": TokenBucket.per_minute(20, 100),
        "GetEntryByCid": TokenBucket.per_minute(1200, 36_000),
    }


class DictSimulator:
    """A running DICT behind a Bridge: a ``grpc.aio`` server of ``DictBridge`` over a model.

    The fault hooks are plain attributes, changeable while serving: ``latency_s`` (seconds added
    before every answer) and ``unavailable`` (answer UNAVAILABLE to everything). ``rejections``
    counts RESOURCE_EXHAUSTED answers per RPC name, ``calls`` every call received.

    Args:
        model: the DICT state to serve; a new empty one when None.
        rate_limits: bucket per RPC name; the DICT's limits (:func:`dict_rate_limits`) when None.
            An RPC without a bucket is not limited.
        latency_s: initial injected latency, seconds.
        unavailable: initial state of the unavailable switch.
        server_credentials: serve TLS with these credentials; plaintext when None.
    """

    def __init__(
        self,
        model: DictModel | None = None,
        *,
        rate_limits: Mapping[str, TokenBucket] | None = None,
        latency_s: float = 0.0,
        unavailable: bool = False,
        server_credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.model = model if model is not None else DictModel()
        self.rate_limits = dict(rate_limits) if rate_limits is not None else dict_rate_limits()
        self.latency_s = latency_s
        self.unavailable = unavailable
        self.rejections: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
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
        """Stop serving; calls in flight get ``grace_s`` seconds (cancelled at once when None)."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace_s)
            self.port = None

    async def __aenter__(self) -> Self:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def admit(self, operation: str, context: grpc.aio.ServicerContext) -> None:
        """Apply the fault hooks and the rate limit of ``operation`` before answering.

        Aborts the call (raises inside gRPC) with UNAVAILABLE when switched off, or
        RESOURCE_EXHAUSTED with a ``retry-after-ms`` trailer when the bucket is empty.
        """
        self.calls[operation] += 1
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        if self.unavailable:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the DICT is unavailable (simulated)")
        bucket = self.rate_limits.get(operation)
        if bucket is not None and not bucket.try_take():
            self.rejections[operation] += 1
            wait = bucket.seconds_until_token()
            wait_ms = str(math.ceil(wait * 1000)) if math.isfinite(wait) else str(2**31)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"rate limit of {operation} exceeded (token bucket empty)",
                                trailing_metadata=((RETRY_AFTER_TRAILER, wait_ms),))


class _Servicer(pb_grpc.DictBridgeServicer):
    """Adapter from gRPC calls to the simulator's model."""

    def __init__(self, simulator: DictSimulator) -> None:
        self._sim = simulator

    async def VerifySync(self, request: pb.VerifySyncRequest,  # noqa: N802 (gRPC method name)
                         context: grpc.aio.ServicerContext) -> pb.VerifySyncResponse:
        await self._sim.admit("VerifySync", context)
        key_type = await _key_type(request.key_type, context)
        vsync = request.vsync
        if len(vsync) != 64 or any(c not in "0123456789abcdefABCDEF" for c in vsync):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "vsync must be 64 hex characters")
        if len(request.participant) != 8 or not request.participant.isdigit():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "participant must be an 8-digit ISPB")
        record = self._sim.model.check_sync(request.participant, key_type, vsync)
        log.info("VerifySync %s/%s: %s", request.participant, key_type, record.result)
        response = pb.VerifySyncResponse(
            result=pb.VerifySyncResponse.OK if record.result == "OK" else pb.VerifySyncResponse.NOK,
            verification_id=record.verification_id,
        )
        response.verified_at.FromMilliseconds(record.verified_at_ms)
        return response

    async def CreateCidFile(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await self._unimplemented("CreateCidFile", context)

    async def GetCidFile(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await self._unimplemented("GetCidFile", context)

    async def DownloadCidFile(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await self._unimplemented("DownloadCidFile", context)

    async def ListCidEvents(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await self._unimplemented("ListCidEvents", context)

    async def GetEntryByCid(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await self._unimplemented("GetEntryByCid", context)

    async def _unimplemented(self, operation: str, context: grpc.aio.ServicerContext) -> None:
        await self._sim.admit(operation, context)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{operation} is not implemented by the simulator yet")


async def _key_type(value: int, context: grpc.aio.ServicerContext) -> str:
    try:
        return KeyType(key_type_from_proto(value)).value
    except ValueError:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "key_type must be one of CPF, CNPJ, PHONE, EMAIL, EVP")
        raise  # pragma: no cover (abort raises)


__all__ = ["DictSimulator", "TokenBucket", "dict_rate_limits"]
