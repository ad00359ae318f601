"""``vsync-stream bridge``: the product's gRPC Bridge API served in front of BCB's DICT REST API.

A ``grpc.aio`` server of ``DictBridge`` (``bridges/proto/vsync_bridge.proto``) whose every RPC is
one call of :class:`~vsync_stream.bridges.dict_api.DictApiClient` (mutual TLS, signed XML, the DICT's
rate-limit policies). The DICT's answers map to gRPC status codes as the proto documents them:

=====================================================  ==================================================
DICT API outcome                                        gRPC status
=====================================================  ==================================================
429 ``RateLimited``                                     RESOURCE_EXHAUSTED, details name the policy;
                                                        trailers ``retry-after-ms`` and ``dict-policy``
503 / other 5xx, connection lost, timeout               UNAVAILABLE (retriable by the product's client)
404 ``NotFound``                                        NOT_FOUND
400 ``BadRequest`` (and a bad gRPC request)             INVALID_ARGUMENT
403 ``Forbidden``                                       PERMISSION_DENIED
unsigned / wrongly signed / untrusted signing cert,    DATA_LOSS (not retried: the answer is not trusted,
schema violation, answer about something else           and never passed on)
mutual TLS failure (expired or foreign certificate)    INTERNAL (not retried: fix the certificates)
CID file not AVAILABLE at DownloadCidFile               FAILED_PRECONDITION
=====================================================  ==================================================

ListCidEvents: the proto's ``end_time`` is exclusive, the DICT's ``EndTime`` inclusive; the Bridge
asks for ``end_time - 1 ms`` (the DICT's timestamps are whole milliseconds).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import signal
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
import grpc

from vsync_stream.bridges.bridge_proto import (
    RETRY_AFTER_TRAILER,
    CidFileStatus,
    datetime_from_proto,
    entry_to_proto,
    key_type_from_proto,
)
from vsync_stream.bridges.dict_api import DictApiClient
from vsync_stream.bridges.generated import vsync_bridge_pb2 as pb
from vsync_stream.bridges.generated import vsync_bridge_pb2_grpc as pb_grpc
from vsync_stream.domain.cid import normalise_cid
from vsync_stream.domain.keys import KeyType, is_ispb
from vsync_stream.errors import (
    BridgeError,
    BridgeNotFound,
    BridgeUnavailable,
    ConfigurationError,
    DictResponseInvalid,
    DictSignatureInvalid,
    DictTlsError,
    RateLimited,
)

if TYPE_CHECKING:
    from vsync_stream.settings import Settings

__all__ = ["POLICY_TRAILER", "BridgeServer", "bridge_command", "grpc_status_of"]

log = logging.getLogger(__name__)

POLICY_TRAILER = "dict-policy"
_T = TypeVar("_T")


def grpc_status_of(error: BridgeError) -> grpc.StatusCode:
    """The gRPC status code a DICT API error is answered with (see the module's table)."""
    if isinstance(error, RateLimited):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(error, BridgeUnavailable):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(error, BridgeNotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, (DictSignatureInvalid, DictResponseInvalid)):
        return grpc.StatusCode.DATA_LOSS
    if isinstance(error, DictTlsError):
        return grpc.StatusCode.INTERNAL
    return {400: grpc.StatusCode.INVALID_ARGUMENT, 403: grpc.StatusCode.PERMISSION_DENIED}.get(
        error.http_status or 0, grpc.StatusCode.INTERNAL)


async def _abort(context: grpc.aio.ServicerContext, error: BridgeError, operation: str) -> NoReturn:
    code = grpc_status_of(error)
    trailers: list[tuple[str, str]] = []
    if error.retry_after_s is not None:
        trailers.append((RETRY_AFTER_TRAILER, str(math.ceil(error.retry_after_s * 1000))))
    if error.policy:
        trailers.append((POLICY_TRAILER, error.policy))
    log.warning("Bridge %s: %s (%s)", operation, code.name, str(error)[:300])
    await context.abort(code, str(error)[:1000], trailing_metadata=tuple(trailers))
    raise AssertionError("unreachable")  # pragma: no cover (abort raises)


class BridgeServer:
    """The gRPC Bridge over a started :class:`DictApiClient`; ``start``/``stop``.

    Args:
        client: the DICT API client (started by the caller, which also stops it).
        server_credentials: serve TLS with these; plaintext when None (loopback only).
    """

    def __init__(self, client: DictApiClient, *, server_credentials: grpc.ServerCredentials | None = None) -> None:
        self.client = client
        self._credentials = server_credentials
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None
        self.host = "127.0.0.1"
        self.available: dict[str, CidFileStatus] = {}  # job id -> its AVAILABLE status (final), for downloads
        self.job_participants: dict[str, str] = {}  # job id -> participant that asked for it

    @property
    def target(self) -> str:
        """``host:port`` for the product's ``VSYNC_BRIDGE_TARGET``."""
        if self.port is None:
            raise RuntimeError("BridgeServer is not started")
        return f"{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Bind and serve; returns the port.

        Raises:
            RuntimeError: the address cannot be bound.
        """
        server = grpc.aio.server()
        pb_grpc.add_DictBridgeServicer_to_server(_Servicer(self), server)
        address = f"{host}:{port}"
        try:
            bound = (server.add_secure_port(address, self._credentials) if self._credentials
                     else server.add_insecure_port(address))
        except RuntimeError as exc:
            raise RuntimeError(f"cannot bind the Bridge to {address}: {exc}") from exc
        await server.start()
        self._server, self.host, self.port = server, host, bound
        log.info("Bridge serving the gRPC Bridge API on %s:%d, calling the DICT API at %s", host, bound,
                 self.client.base_url)
        return bound

    async def stop(self, grace_s: float | None = 1.0) -> None:
        """Stop serving (calls in flight get ``grace_s`` seconds)."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace_s)
            self.port = None


class _Servicer(pb_grpc.DictBridgeServicer):
    def __init__(self, bridge: BridgeServer) -> None:
        self._bridge = bridge
        self._client = bridge.client

    async def _call(self, operation: str, context: grpc.aio.ServicerContext, call: Awaitable[_T]) -> _T:
        try:
            return await call
        except BridgeError as exc:
            await _abort(context, exc, operation)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)[:300])
            raise  # pragma: no cover (abort raises)

    async def VerifySync(self, request: pb.VerifySyncRequest,  # noqa: N802 (gRPC method name)
                         context: grpc.aio.ServicerContext) -> pb.VerifySyncResponse:
        key_type = await _key_type(request.key_type, context)
        participant = await _participant(request.participant, context)
        if len(request.vsync) != 64 or request.vsync.strip("0123456789abcdefABCDEF"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "vsync must be 64 hex characters")
        result = await self._call("VerifySync", context,
                                  self._client.verify_sync(participant, key_type, request.vsync))
        response = pb.VerifySyncResponse(result=pb.VerifySyncResponse.OK if result.ok else pb.VerifySyncResponse.NOK,
                                         verification_id=result.verification_id)
        if result.verified_at is not None:
            response.verified_at.FromDatetime(result.verified_at)
        return response

    async def CreateCidFile(self, request: pb.CreateCidFileRequest,  # noqa: N802
                            context: grpc.aio.ServicerContext) -> pb.CreateCidFileResponse:
        key_type = await _key_type(request.key_type, context)
        participant = await _participant(request.participant, context)
        status = await self._call("CreateCidFile", context, self._client.create_cid_file(participant, key_type))
        self._bridge.job_participants[status.job_id] = participant
        return pb.CreateCidFileResponse(job_id=status.job_id)

    async def GetCidFile(self, request: pb.GetCidFileRequest,  # noqa: N802
                         context: grpc.aio.ServicerContext) -> pb.GetCidFileResponse:
        status = await self._call("GetCidFile", context, self._client.get_cid_file(
            request.job_id, self._bridge.job_participants.get(request.job_id)))
        if status.status == "AVAILABLE":
            self._bridge.available[status.job_id] = status
        response = pb.GetCidFileResponse(job_id=status.job_id, status=pb.GetCidFileResponse.Status.Value(status.status),
                                         participant=status.participant or "")
        if status.key_type:
            response.key_type = pb.KeyType.Value("KEY_TYPE_" + status.key_type)
        if status.requested_at is not None:
            response.requested_at.FromDatetime(status.requested_at)
        if status.status == "AVAILABLE":
            response.url = status.url or ""
            response.byte_size = status.byte_size or 0
            response.sha256 = status.sha256 or ""
        return response

    async def DownloadCidFile(self, request: pb.DownloadCidFileRequest,  # noqa: N802
                              context: grpc.aio.ServicerContext) -> AsyncIterator[pb.CidFileChunk]:
        known = self._bridge.available.get(request.job_id)
        if known is None:  # not polled to AVAILABLE through this Bridge yet: ask the DICT once
            fetched: CidFileStatus = await self._call("GetCidFile", context, self._client.get_cid_file(
                request.job_id, self._bridge.job_participants.get(request.job_id)))
            if fetched.status != "AVAILABLE":
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"CID file job is {fetched.status}; poll GetCidFile until it is AVAILABLE")
            self._bridge.available[fetched.job_id] = known = fetched
        status = known
        assert status.url is not None and status.byte_size is not None and status.sha256 is not None
        header: pb.CidFileChunk | None = pb.CidFileChunk(byte_size=status.byte_size, sha256=status.sha256)
        try:
            async for data in self._client.download(status.url, status.byte_size, status.sha256):
                if header is not None:
                    header.data = data
                    yield header
                    header = None
                else:
                    yield pb.CidFileChunk(data=data)
        except BridgeError as exc:
            await _abort(context, exc, "DownloadCidFile")
        if header is not None:
            yield header

    async def ListCidEvents(self, request: pb.ListCidEventsRequest,  # noqa: N802
                            context: grpc.aio.ServicerContext) -> pb.ListCidEventsResponse:
        key_type = await _key_type(request.key_type, context)
        participant = await _participant(request.participant, context)
        limit = request.limit or 200
        if not 1 <= limit <= 200:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit must be between 1 and 200")
        start = datetime_from_proto(request.start_time)
        end = None
        if request.HasField("end_time"):
            end = datetime_from_proto(request.end_time) - timedelta(milliseconds=1)  # DICT's EndTime is inclusive
            if end < start:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "end_time is before start_time")
        page = await self._call("ListCidEvents", context,
                                self._client.list_cid_events(participant, key_type, start, end, limit))
        response = pb.ListCidEventsResponse(has_more_elements=page.has_more_elements)
        for event in page.events:
            message = response.events.add(cid=event.cid, type=pb.CidEvent.Type.Value(event.type))
            message.timestamp.FromDatetime(event.timestamp)
        response.vsync_after_first = page.vsync_after_first or ""
        response.vsync_after_last = page.vsync_after_last or ""
        return response

    async def GetEntryByCid(self, request: pb.GetEntryByCidRequest,  # noqa: N802
                            context: grpc.aio.ServicerContext) -> pb.GetEntryByCidResponse:
        key_type = await _key_type(request.key_type, context)
        participant = await _participant(request.participant, context)
        try:
            cid = normalise_cid(request.cid)
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "cid must be 64 hex characters")
            raise  # pragma: no cover
        entry = await self._call("GetEntryByCid", context, self._client.get_entry_by_cid(participant, key_type, cid))
        try:
            message = entry_to_proto(entry)
        except ValueError:
            await context.abort(grpc.StatusCode.DATA_LOSS, "the DICT's entry cannot be represented in the Bridge proto")
            raise  # pragma: no cover
        return pb.GetEntryByCidResponse(entry=message, cid=cid)


async def _participant(value: str, context: grpc.aio.ServicerContext) -> str:
    if not is_ispb(value):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "participant must be an 8-digit ISPB")
    return value


async def _key_type(value: int, context: grpc.aio.ServicerContext) -> str:
    try:
        return KeyType(key_type_from_proto(value)).value
    except ValueError:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "key_type must be one of CPF, CNPJ, PHONE, EMAIL, EVP")
        raise  # pragma: no cover


# ---------------------------------------------------------------------- the command


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def server_credentials_from_settings(settings: Settings, host: str) -> grpc.ServerCredentials | None:
    """The gRPC server credentials of ``vsync-stream bridge`` (``VSYNC_BRIDGE_SERVER_*``).

    Returns:
        TLS credentials (client certificates required when a client CA is set), or None for plaintext.

    Raises:
        ConfigurationError: only one of certificate and key is set, a file is unreadable, or ``host``
            is not a loopback address without mutual TLS (the Bridge answers entries: personal data).
    """
    from vsync_stream.bridges.tls import readable_file

    cert = readable_file(settings.bridge_server_tls_cert, "VSYNC_BRIDGE_SERVER_TLS_CERT")
    key = readable_file(settings.bridge_server_tls_key, "VSYNC_BRIDGE_SERVER_TLS_KEY")
    client_ca = readable_file(settings.bridge_server_client_ca, "VSYNC_BRIDGE_SERVER_CLIENT_CA")
    if (cert is None) != (key is None):
        raise ConfigurationError("set both VSYNC_BRIDGE_SERVER_TLS_CERT and VSYNC_BRIDGE_SERVER_TLS_KEY, or neither")
    if not _loopback(host) and (cert is None or client_ca is None):
        raise ConfigurationError(f"the Bridge would serve entries (personal data) on {host} without mutual TLS: "
                                 "set VSYNC_BRIDGE_SERVER_TLS_CERT, _TLS_KEY and VSYNC_BRIDGE_SERVER_CLIENT_CA, "
                                 "or listen on 127.0.0.1")
    if cert is None or key is None:
        return None
    return grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())],
                                       root_certificates=client_ca.read_bytes() if client_ca else None,
                                       require_client_auth=client_ca is not None)


def client_from_settings(settings: Settings) -> DictApiClient:
    """A :class:`DictApiClient` from the ``VSYNC_DICT_API_*`` settings.

    Raises:
        ConfigurationError: a required file setting is unset or unreadable.
    """
    from vsync_stream.bridges.pacing import parse_rate_limits
    from vsync_stream.bridges.tls import readable_file

    files: dict[str, Any] = {}
    for name in ("tls_ca", "tls_cert", "tls_key", "signing_cert", "signing_key", "verify_ca"):
        env = f"VSYNC_DICT_API_{name.upper()}"
        path = readable_file(getattr(settings, f"dict_api_{name}"), env)
        if path is None:
            raise ConfigurationError(f"{env} is not set: `vsync-stream bridge` needs the participant's TLS and "
                                     "signing certificates and the DICT's CAs (see README, 'The Bridge to BCB's DICT')")
        files[name] = path
    return DictApiClient(settings.dict_api_url, settings.dict_api_participant or settings.participants[0],
                         timeout_s=settings.dict_api_timeout_s,
                         rate_limits=parse_rate_limits(settings.bridge_rate_limits), **files)


async def _serve_bridge(listen: str) -> None:
    from vsync_stream.settings import Settings

    host, _, port = listen.rpartition(":")
    host = host or "127.0.0.1"
    settings = Settings()
    credentials = server_credentials_from_settings(settings, host)
    client = client_from_settings(settings)
    await client.start()
    server = BridgeServer(client, server_credentials=credentials)
    try:
        await server.start(host, int(port))
        click.echo(f"Bridge serving the gRPC Bridge API on {server.target} "
                   f"({'mutual TLS' if settings.bridge_server_client_ca else 'TLS' if credentials else 'plaintext'}), "
                   f"calling the DICT API at {client.base_url}; Ctrl-C stops")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await server.stop()
        await client.stop()


@click.command("bridge")
@click.option("--listen", envvar="VSYNC_BRIDGE_LISTEN", default="127.0.0.1:15051", show_default=True,
              help="host:port of the gRPC Bridge API (the workers' VSYNC_BRIDGE_TARGET).")
def bridge_command(listen: str) -> None:
    """Serve the gRPC Bridge API in front of BCB's DICT REST API (mTLS, signed XML; VSYNC_DICT_API_*)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve_bridge(listen))
    except BridgeError as exc:
        raise click.ClickException(f"the DICT API cannot be used: {exc}") from None
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
