import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeyType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_TYPE_UNSPECIFIED: _ClassVar[KeyType]
    KEY_TYPE_CPF: _ClassVar[KeyType]
    KEY_TYPE_CNPJ: _ClassVar[KeyType]
    KEY_TYPE_PHONE: _ClassVar[KeyType]
    KEY_TYPE_EMAIL: _ClassVar[KeyType]
    KEY_TYPE_EVP: _ClassVar[KeyType]

class AccountType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCOUNT_TYPE_UNSPECIFIED: _ClassVar[AccountType]
    ACCOUNT_TYPE_CACC: _ClassVar[AccountType]
    ACCOUNT_TYPE_TRAN: _ClassVar[AccountType]
    ACCOUNT_TYPE_SLRY: _ClassVar[AccountType]
    ACCOUNT_TYPE_SVGS: _ClassVar[AccountType]

class OwnerType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OWNER_TYPE_UNSPECIFIED: _ClassVar[OwnerType]
    OWNER_TYPE_NATURAL_PERSON: _ClassVar[OwnerType]
    OWNER_TYPE_LEGAL_PERSON: _ClassVar[OwnerType]
KEY_TYPE_UNSPECIFIED: KeyType
KEY_TYPE_CPF: KeyType
KEY_TYPE_CNPJ: KeyType
KEY_TYPE_PHONE: KeyType
KEY_TYPE_EMAIL: KeyType
KEY_TYPE_EVP: KeyType
ACCOUNT_TYPE_UNSPECIFIED: AccountType
ACCOUNT_TYPE_CACC: AccountType
ACCOUNT_TYPE_TRAN: AccountType
ACCOUNT_TYPE_SLRY: AccountType
ACCOUNT_TYPE_SVGS: AccountType
OWNER_TYPE_UNSPECIFIED: OwnerType
OWNER_TYPE_NATURAL_PERSON: OwnerType
OWNER_TYPE_LEGAL_PERSON: OwnerType

class VerifySyncRequest(_message.Message):
    __slots__ = ("participant", "key_type", "vsync")
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    VSYNC_FIELD_NUMBER: _ClassVar[int]
    participant: str
    key_type: KeyType
    vsync: str
    def __init__(self, participant: _Optional[str] = ..., key_type: _Optional[_Union[KeyType, str]] = ..., vsync: _Optional[str] = ...) -> None: ...

class VerifySyncResponse(_message.Message):
    __slots__ = ("result", "verification_id", "verified_at")
    class Result(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        RESULT_UNSPECIFIED: _ClassVar[VerifySyncResponse.Result]
        OK: _ClassVar[VerifySyncResponse.Result]
        NOK: _ClassVar[VerifySyncResponse.Result]
    RESULT_UNSPECIFIED: VerifySyncResponse.Result
    OK: VerifySyncResponse.Result
    NOK: VerifySyncResponse.Result
    RESULT_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_AT_FIELD_NUMBER: _ClassVar[int]
    result: VerifySyncResponse.Result
    verification_id: str
    verified_at: _timestamp_pb2.Timestamp
    def __init__(self, result: _Optional[_Union[VerifySyncResponse.Result, str]] = ..., verification_id: _Optional[str] = ..., verified_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateCidFileRequest(_message.Message):
    __slots__ = ("participant", "key_type")
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    participant: str
    key_type: KeyType
    def __init__(self, participant: _Optional[str] = ..., key_type: _Optional[_Union[KeyType, str]] = ...) -> None: ...

class CreateCidFileResponse(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetCidFileRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetCidFileResponse(_message.Message):
    __slots__ = ("job_id", "status", "url", "byte_size", "sha256", "participant", "key_type", "requested_at")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[GetCidFileResponse.Status]
        REQUESTED: _ClassVar[GetCidFileResponse.Status]
        PROCESSING: _ClassVar[GetCidFileResponse.Status]
        AVAILABLE: _ClassVar[GetCidFileResponse.Status]
        UNAVAILABLE: _ClassVar[GetCidFileResponse.Status]
        ERROR: _ClassVar[GetCidFileResponse.Status]
    STATUS_UNSPECIFIED: GetCidFileResponse.Status
    REQUESTED: GetCidFileResponse.Status
    PROCESSING: GetCidFileResponse.Status
    AVAILABLE: GetCidFileResponse.Status
    UNAVAILABLE: GetCidFileResponse.Status
    ERROR: GetCidFileResponse.Status
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    status: GetCidFileResponse.Status
    url: str
    byte_size: int
    sha256: str
    participant: str
    key_type: KeyType
    requested_at: _timestamp_pb2.Timestamp
    def __init__(self, job_id: _Optional[str] = ..., status: _Optional[_Union[GetCidFileResponse.Status, str]] = ..., url: _Optional[str] = ..., byte_size: _Optional[int] = ..., sha256: _Optional[str] = ..., participant: _Optional[str] = ..., key_type: _Optional[_Union[KeyType, str]] = ..., requested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DownloadCidFileRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CidFileChunk(_message.Message):
    __slots__ = ("data", "byte_size", "sha256")
    DATA_FIELD_NUMBER: _ClassVar[int]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    byte_size: int
    sha256: str
    def __init__(self, data: _Optional[bytes] = ..., byte_size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class ListCidEventsRequest(_message.Message):
    __slots__ = ("participant", "key_type", "start_time", "end_time", "limit")
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    participant: str
    key_type: KeyType
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    limit: int
    def __init__(self, participant: _Optional[str] = ..., key_type: _Optional[_Union[KeyType, str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ...) -> None: ...

class CidEvent(_message.Message):
    __slots__ = ("cid", "type", "timestamp")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[CidEvent.Type]
        ADDED: _ClassVar[CidEvent.Type]
        REMOVED: _ClassVar[CidEvent.Type]
    TYPE_UNSPECIFIED: CidEvent.Type
    ADDED: CidEvent.Type
    REMOVED: CidEvent.Type
    CID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    cid: str
    type: CidEvent.Type
    timestamp: _timestamp_pb2.Timestamp
    def __init__(self, cid: _Optional[str] = ..., type: _Optional[_Union[CidEvent.Type, str]] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListCidEventsResponse(_message.Message):
    __slots__ = ("events", "has_more_elements", "vsync_after_first", "vsync_after_last")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    VSYNC_AFTER_FIRST_FIELD_NUMBER: _ClassVar[int]
    VSYNC_AFTER_LAST_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[CidEvent]
    has_more_elements: bool
    vsync_after_first: str
    vsync_after_last: str
    def __init__(self, events: _Optional[_Iterable[_Union[CidEvent, _Mapping]]] = ..., has_more_elements: _Optional[bool] = ..., vsync_after_first: _Optional[str] = ..., vsync_after_last: _Optional[str] = ...) -> None: ...

class GetEntryByCidRequest(_message.Message):
    __slots__ = ("participant", "key_type", "cid")
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    participant: str
    key_type: KeyType
    cid: str
    def __init__(self, participant: _Optional[str] = ..., key_type: _Optional[_Union[KeyType, str]] = ..., cid: _Optional[str] = ...) -> None: ...

class Account(_message.Message):
    __slots__ = ("participant", "branch", "account_number", "account_type", "opening_date")
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_TYPE_FIELD_NUMBER: _ClassVar[int]
    OPENING_DATE_FIELD_NUMBER: _ClassVar[int]
    participant: str
    branch: str
    account_number: str
    account_type: AccountType
    opening_date: _timestamp_pb2.Timestamp
    def __init__(self, participant: _Optional[str] = ..., branch: _Optional[str] = ..., account_number: _Optional[str] = ..., account_type: _Optional[_Union[AccountType, str]] = ..., opening_date: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Owner(_message.Message):
    __slots__ = ("type", "tax_id_number", "name", "trade_name")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TAX_ID_NUMBER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TRADE_NAME_FIELD_NUMBER: _ClassVar[int]
    type: OwnerType
    tax_id_number: str
    name: str
    trade_name: str
    def __init__(self, type: _Optional[_Union[OwnerType, str]] = ..., tax_id_number: _Optional[str] = ..., name: _Optional[str] = ..., trade_name: _Optional[str] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("key", "key_type", "request_id", "account", "owner")
    KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    key: str
    key_type: KeyType
    request_id: str
    account: Account
    owner: Owner
    def __init__(self, key: _Optional[str] = ..., key_type: _Optional[_Union[KeyType, str]] = ..., request_id: _Optional[str] = ..., account: _Optional[_Union[Account, _Mapping]] = ..., owner: _Optional[_Union[Owner, _Mapping]] = ...) -> None: ...

class GetEntryByCidResponse(_message.Message):
    __slots__ = ("entry", "cid")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    cid: str
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ..., cid: _Optional[str] = ...) -> None: ...
