"""google.rpc.Status and google.rpc.ErrorInfo without googleapis-common-protos.

The two message types are declared at import time in a private descriptor pool (wire-compatible
with googleapis' definitions for the fields declared here), so the echo server can attach rich
error details (the `grpc-status-details-bin` trailer) and the tests can decode them.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory

DETAILS_KEY = "grpc-status-details-bin"
ERROR_DOMAIN = "echo.test.grpc-mesh"

_F = descriptor_pb2.FieldDescriptorProto


def _field(name: str, number: int, kind: int, *, repeated: bool = False, type_name: str = "") -> Any:
    label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    field = _F(name=name, number=number, type=kind, label=label, json_name=name)
    if type_name:
        field.type_name = type_name
    return field


def _build_pool() -> Any:
    pool = descriptor_pool.DescriptorPool()
    any_file = descriptor_pb2.FileDescriptorProto()
    any_pb2.DESCRIPTOR.CopyToProto(any_file)
    pool.Add(any_file)
    rpc = descriptor_pb2.FileDescriptorProto(
        name="tests/google/rpc/status_subset.proto",
        package="google.rpc",
        syntax="proto3",
        dependency=[any_file.name],
    )
    rpc.message_type.add(
        name="Status",
        field=[
            _field("code", 1, _F.TYPE_INT32),
            _field("message", 2, _F.TYPE_STRING),
            _field("details", 3, _F.TYPE_MESSAGE, repeated=True, type_name=".google.protobuf.Any"),
        ],
    )
    rpc.message_type.add(
        name="ErrorInfo",
        field=[_field("reason", 1, _F.TYPE_STRING), _field("domain", 2, _F.TYPE_STRING)],
    )
    pool.Add(rpc)
    return pool


_POOL = _build_pool()
Status: Any = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("google.rpc.Status"))
ErrorInfo: Any = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("google.rpc.ErrorInfo"))


def rich_status(code: int, message: str, reason: str) -> Any:
    """A Status carrying one ErrorInfo detail."""
    status = Status(code=code, message=message)
    status.details.add().Pack(ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
    return status


def rich_status_bytes(code: int, message: str, reason: str) -> bytes:
    """The serialized Status the echo server sends for (code, message, reason): deterministic."""
    data: bytes = rich_status(code, message, reason).SerializeToString(deterministic=True)
    return data


def parse_status(data: bytes) -> Any:
    status = Status()
    status.ParseFromString(data)
    return status


def error_infos(status: Any) -> list[Any]:
    """The ErrorInfo details of a Status, unpacked."""
    infos = []
    for detail in status.details:
        info = ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    return infos
