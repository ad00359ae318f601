"""Conversions between the Bridge proto messages and the domain (DESIGN 4.3), and the result types.

Shared by the client (:mod:`vsync_stream.bridges.dict_bridge`) and the DICT simulator's server, so
both sides speak exactly the same mapping. Key, account and owner types travel as proto enums
(``KEY_TYPE_CPF`` ↔ ``"CPF"``); every string that goes into a CID is carried unchanged. Hex from
the wire (CIDs, VSyncs, SHA-256) may be upper case and is lower-cased on the way in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, cast

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from vsync_stream.bridges.generated import vsync_bridge_pb2 as pb
from vsync_stream.domain.entry import Entry
from vsync_stream.domain.keys import KeyType
from vsync_stream.errors import BridgeError, BridgeNotFound, BridgeUnavailable, RateLimited

# Trailer with which the simulator (and a Bridge that knows) tells a rate-limited caller when the
# bucket has a token again, in milliseconds.
RETRY_AFTER_TRAILER = "retry-after-ms"


def key_type_to_proto(key_type: str) -> pb.KeyType:
    """``"CPF"`` → ``KEY_TYPE_CPF``.

    Raises:
        ValueError: not one of the five key types.
    """
    return cast("pb.KeyType", pb.KeyType.Value("KEY_TYPE_" + KeyType(key_type).value))


def key_type_from_proto(value: int) -> str:
    """``KEY_TYPE_CPF`` → ``"CPF"``.

    Raises:
        ValueError: unspecified or unknown value.
    """
    if value == pb.KEY_TYPE_UNSPECIFIED:
        raise ValueError("key type is unspecified")
    return pb.KeyType.Name(value).removeprefix("KEY_TYPE_")


def datetime_to_proto(moment: datetime) -> Timestamp:
    """An aware datetime as a protobuf Timestamp.

    Raises:
        ValueError: ``moment`` is naive (no time zone).
    """
    if moment.tzinfo is None:
        raise ValueError("use an aware datetime (UTC)")
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def datetime_from_proto(stamp: Timestamp) -> datetime:
    """A protobuf Timestamp as an aware UTC datetime."""
    return stamp.ToDatetime(tzinfo=UTC)


def entry_to_proto(entry: Entry) -> pb.Entry:
    """The domain entry as a proto ``Entry``; hashed strings are carried unchanged.

    Raises:
        ValueError: unknown key, account or owner type, or an opening date that is not RFC 3339.
    """
    account = pb.Account(
        participant=entry.participant,
        account_number=entry.account_number,
        account_type=pb.AccountType.Value("ACCOUNT_TYPE_" + entry.account_type),
    )
    if entry.branch is not None:
        account.branch = entry.branch
    if entry.opening_date:
        moment = datetime.fromisoformat(entry.opening_date)
        account.opening_date.CopyFrom(datetime_to_proto(moment if moment.tzinfo else moment.replace(tzinfo=UTC)))
    owner = pb.Owner(
        type=pb.OwnerType.Value("OWNER_TYPE_" + entry.owner_type),
        tax_id_number=entry.owner_tax_id,
        name=entry.owner_name,
    )
    if entry.owner_trade_name is not None:
        owner.trade_name = entry.owner_trade_name
    return pb.Entry(key=entry.key, key_type=key_type_to_proto(entry.key_type), request_id=entry.request_id,
                    account=account, owner=owner)


def entry_from_proto(message: pb.Entry) -> Entry:
    """The proto ``Entry`` as the domain entry (opening date as RFC 3339 UTC with ``Z``).

    Raises:
        ValueError: an unspecified enum value.
    """
    account, owner = message.account, message.owner
    if account.account_type == pb.ACCOUNT_TYPE_UNSPECIFIED or owner.type == pb.OWNER_TYPE_UNSPECIFIED:
        raise ValueError("account type and owner type must be specified")
    return Entry(
        key=message.key,
        key_type=key_type_from_proto(message.key_type),
        request_id=message.request_id,
        participant=account.participant,
        branch=account.branch if account.HasField("branch") else None,
        account_number=account.account_number,
        account_type=pb.AccountType.Name(account.account_type).removeprefix("ACCOUNT_TYPE_"),
        owner_type=pb.OwnerType.Name(owner.type).removeprefix("OWNER_TYPE_"),
        owner_tax_id=owner.tax_id_number,
        owner_name=owner.name,
        owner_trade_name=owner.trade_name if owner.HasField("trade_name") else None,
        opening_date=account.opening_date.ToJsonString() if account.HasField("opening_date") else None,
    )


# ------------------------------------------------------------------ results of the operations


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


CidFileState = Literal["REQUESTED", "PROCESSING", "AVAILABLE", "UNAVAILABLE", "ERROR"]


@dataclass(frozen=True, slots=True)
class CidFileStatus:
    """Status of a CID file job; ``url``, ``byte_size`` (bytes) and ``sha256`` (64 lower-case hex)
    are set once AVAILABLE."""

    job_id: str
    status: CidFileState
    url: str | None
    byte_size: int | None
    sha256: str | None
    participant: str | None = None
    key_type: str | None = None
    requested_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class CidEvent:
    """One entry of the DICT's CID event log: a CID (64 lower-case hex) ADDED to or REMOVED from a
    participant's set at ``timestamp`` (aware, UTC)."""

    cid: str
    type: Literal["ADDED", "REMOVED"]
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class CidEventsPage:
    """A page of CID events, ascending; VSyncs (64 lower-case hex) after its first and last event,
    None when the page is empty."""

    events: list[CidEvent]
    has_more_elements: bool
    vsync_after_first: str | None
    vsync_after_last: str | None


def cid_file_status_from_proto(message: pb.GetCidFileResponse, job_id: str) -> CidFileStatus:
    """The proto ``GetCidFileResponse`` as a :class:`CidFileStatus`.

    Args:
        message: the response.
        job_id: the job asked about (used when the response leaves ``job_id`` empty).

    Raises:
        ValueError: no status, or an AVAILABLE file whose SHA-256 is not 64 hex chars.
    """
    if message.status == pb.GetCidFileResponse.STATUS_UNSPECIFIED:
        raise ValueError("the CID file status is unspecified")
    available = message.status == pb.GetCidFileResponse.AVAILABLE
    sha256 = normalise_sha256(message.sha256) if available else None
    status: CidFileState = pb.GetCidFileResponse.Status.Name(message.status)  # type: ignore[assignment]
    return CidFileStatus(
        job_id=message.job_id or job_id,
        status=status,
        url=(message.url or None) if available else None,
        byte_size=message.byte_size if available else None,
        sha256=sha256,
        participant=message.participant or None,
        key_type=key_type_from_proto(message.key_type) if message.key_type else None,
        requested_at=datetime_from_proto(message.requested_at) if message.HasField("requested_at") else None,
    )


def cid_events_page_from_proto(message: pb.ListCidEventsResponse) -> CidEventsPage:
    """The proto ``ListCidEventsResponse`` as a :class:`CidEventsPage` (hex lower-cased).

    Raises:
        ValueError: an event of unspecified type.
    """
    events = []
    for event in message.events:
        if event.type not in (pb.CidEvent.ADDED, pb.CidEvent.REMOVED):
            raise ValueError("a CID event is neither ADDED nor REMOVED")
        kind: Literal["ADDED", "REMOVED"] = "ADDED" if event.type == pb.CidEvent.ADDED else "REMOVED"
        events.append(CidEvent(event.cid.lower(), kind, datetime_from_proto(event.timestamp)))
    return CidEventsPage(events, message.has_more_elements, message.vsync_after_first.lower() or None,
                         message.vsync_after_last.lower() or None)


def normalise_sha256(text: str) -> str:
    """A SHA-256 given as hex by the DICT, lower-cased (upper case is accepted).

    Raises:
        ValueError: not exactly 64 hex characters.
    """
    if len(text) != 64 or text.strip("0123456789abcdefABCDEF"):
        raise ValueError("a SHA-256 is 64 hex characters")
    return text.lower()


# ------------------------------------------------------------------ errors


def map_rpc_error(exc: grpc.aio.AioRpcError, operation: str) -> BridgeError:
    """Turn a gRPC error into the project's exception (raise it ``from exc``).

    Args:
        exc: the gRPC error.
        operation: the RPC name, for the message.

    Returns:
        :class:`RateLimited` (with ``retry_after_s`` when the server sent a hint),
        :class:`BridgeUnavailable` (UNAVAILABLE, DEADLINE_EXCEEDED), :class:`BridgeNotFound` or
        :class:`BridgeError`; ``status_code`` is set on each.
    """
    code = exc.code()
    message = f"Bridge {operation} failed with {code.name}: {(exc.details() or '')[:200]}"
    error: BridgeError
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        error = RateLimited(message + " (DICT rate limit; wait for the bucket to refill)")
        error.retry_after_s = _retry_after_s(exc)
    elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        error = BridgeUnavailable(message + " (check that the Bridge is up and reachable)")
    elif code is grpc.StatusCode.NOT_FOUND:
        error = BridgeNotFound(message)
    else:
        error = BridgeError(message)
    error.status_code = code
    return error


def _retry_after_s(exc: grpc.aio.AioRpcError) -> float | None:
    for key, value in exc.trailing_metadata() or ():
        if key == RETRY_AFTER_TRAILER:
            try:
                return max(0.0, float(value) / 1000)
            except (TypeError, ValueError):
                return None
    return None
