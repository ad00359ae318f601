"""Conversions between the Bridge proto messages and the domain (DESIGN 4.3).

Shared by the client (:mod:`vsync_stream.bridges.dict_bridge`) and the DICT simulator's server, so
both sides speak exactly the same mapping. Key, account and owner types travel as proto enums
(``KEY_TYPE_CPF`` ↔ ``"CPF"``); every string that goes into a CID is carried unchanged.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from vsync_stream.bridges.generated import vsync_bridge_pb2 as pb
from vsync_stream.domain.entry import Entry
from vsync_stream.domain.keys import KeyType


def key_type_to_proto(key_type: str) -> int:
    """``"CPF"`` → ``KEY_TYPE_CPF``.

    Raises:
        ValueError: not one of the five key types.
    """
    return pb.KeyType.Value("KEY_TYPE_" + KeyType(key_type).value)


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
