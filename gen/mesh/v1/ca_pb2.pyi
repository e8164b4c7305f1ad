import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateCertificateRequest(_message.Message):
    __slots__ = ("csr", "renewal")
    CSR_FIELD_NUMBER: _ClassVar[int]
    RENEWAL_FIELD_NUMBER: _ClassVar[int]
    csr: str
    renewal: Renewal
    def __init__(self, csr: _Optional[str] = ..., renewal: _Optional[_Union[Renewal, _Mapping]] = ...) -> None: ...

class Renewal(_message.Message):
    __slots__ = ("certificate_chain", "unix_time", "signature")
    CERTIFICATE_CHAIN_FIELD_NUMBER: _ClassVar[int]
    UNIX_TIME_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    certificate_chain: str
    unix_time: int
    signature: bytes
    def __init__(self, certificate_chain: _Optional[str] = ..., unix_time: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class CreateCertificateResponse(_message.Message):
    __slots__ = ("cert_chain", "trust_bundle", "spiffe_id", "not_after")
    CERT_CHAIN_FIELD_NUMBER: _ClassVar[int]
    TRUST_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    cert_chain: _containers.RepeatedScalarFieldContainer[str]
    trust_bundle: _containers.RepeatedScalarFieldContainer[str]
    spiffe_id: str
    not_after: _timestamp_pb2.Timestamp
    def __init__(self, cert_chain: _Optional[_Iterable[str]] = ..., trust_bundle: _Optional[_Iterable[str]] = ..., spiffe_id: _Optional[str] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
