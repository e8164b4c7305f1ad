from mesh.v1 import resources_pb2 as _resources_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StreamSnapshotsRequest(_message.Message):
    __slots__ = ("hello", "ack", "nack", "health", "certificate")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    ack: Ack
    nack: Nack
    health: HealthReport
    certificate: IdentityProof
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., nack: _Optional[_Union[Nack, _Mapping]] = ..., health: _Optional[_Union[HealthReport, _Mapping]] = ..., certificate: _Optional[_Union[IdentityProof, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("node_id", "service", "namespace", "labels", "inbound_address", "identity", "grpc_services", "dependencies", "admin_address", "proof")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INBOUND_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    GRPC_SERVICES_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    ADMIN_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    service: str
    namespace: str
    labels: _containers.ScalarMap[str, str]
    inbound_address: str
    identity: str
    grpc_services: _containers.RepeatedScalarFieldContainer[str]
    dependencies: _containers.RepeatedScalarFieldContainer[str]
    admin_address: str
    proof: IdentityProof
    def __init__(self, node_id: _Optional[str] = ..., service: _Optional[str] = ..., namespace: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., inbound_address: _Optional[str] = ..., identity: _Optional[str] = ..., grpc_services: _Optional[_Iterable[str]] = ..., dependencies: _Optional[_Iterable[str]] = ..., admin_address: _Optional[str] = ..., proof: _Optional[_Union[IdentityProof, _Mapping]] = ...) -> None: ...

class IdentityProof(_message.Message):
    __slots__ = ("certificate_chain", "unix_time", "signature")
    CERTIFICATE_CHAIN_FIELD_NUMBER: _ClassVar[int]
    UNIX_TIME_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    certificate_chain: str
    unix_time: int
    signature: bytes
    def __init__(self, certificate_chain: _Optional[str] = ..., unix_time: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("version", "reason")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    version: str
    reason: str
    def __init__(self, version: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class HealthReport(_message.Message):
    __slots__ = ("serving",)
    SERVING_FIELD_NUMBER: _ClassVar[int]
    serving: bool
    def __init__(self, serving: _Optional[bool] = ...) -> None: ...

class StreamSnapshotsResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: Snapshot
    def __init__(self, snapshot: _Optional[_Union[Snapshot, _Mapping]] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("version", "store_revision", "services", "policies", "trust_roots", "signing_ca")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STORE_REVISION_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    TRUST_ROOTS_FIELD_NUMBER: _ClassVar[int]
    SIGNING_CA_FIELD_NUMBER: _ClassVar[int]
    version: str
    store_revision: int
    services: _containers.RepeatedCompositeFieldContainer[Service]
    policies: _containers.RepeatedCompositeFieldContainer[_resources_pb2.Resource]
    trust_roots: _containers.RepeatedScalarFieldContainer[str]
    signing_ca: str
    def __init__(self, version: _Optional[str] = ..., store_revision: _Optional[int] = ..., services: _Optional[_Iterable[_Union[Service, _Mapping]]] = ..., policies: _Optional[_Iterable[_Union[_resources_pb2.Resource, _Mapping]]] = ..., trust_roots: _Optional[_Iterable[str]] = ..., signing_ca: _Optional[str] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("name", "namespace", "grpc_services", "endpoints")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    GRPC_SERVICES_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    grpc_services: _containers.RepeatedScalarFieldContainer[str]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., grpc_services: _Optional[_Iterable[str]] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("address", "labels", "identity")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    address: str
    labels: _containers.ScalarMap[str, str]
    identity: str
    def __init__(self, address: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., identity: _Optional[str] = ...) -> None: ...
