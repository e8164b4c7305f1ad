from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReadyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReadyResponse(_message.Message):
    __slots__ = ("ready",)
    READY_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    def __init__(self, ready: _Optional[bool] = ...) -> None: ...

class GetConfigDumpRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetConfigDumpResponse(_message.Message):
    __slots__ = ("config_dump",)
    CONFIG_DUMP_FIELD_NUMBER: _ClassVar[int]
    config_dump: _struct_pb2.Struct
    def __init__(self, config_dump: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class GetClustersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetClustersResponse(_message.Message):
    __slots__ = ("clusters", "destinations")
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    clusters: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    destinations: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    def __init__(self, clusters: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ..., destinations: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ...) -> None: ...

class GetCertsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCertsResponse(_message.Message):
    __slots__ = ("certs",)
    CERTS_FIELD_NUMBER: _ClassVar[int]
    certs: _struct_pb2.Struct
    def __init__(self, certs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("stats",)
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: _struct_pb2.Struct
    def __init__(self, stats: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class GetMetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetMetricsResponse(_message.Message):
    __slots__ = ("text", "content_type")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    text: str
    content_type: str
    def __init__(self, text: _Optional[str] = ..., content_type: _Optional[str] = ...) -> None: ...
