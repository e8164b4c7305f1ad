"""The policy service's results as mesh.v1 messages, and back: shared by the gRPC and REST APIs,
so both return the same shapes (REST sends these messages in the protobuf JSON mapping)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from mesh.v1 import policy_pb2, resources_pb2

from control_plane.policy_service import ApplyResult, Sidecars
from control_plane.resources import Resource, ResourceKey, Revision, Spec


def struct(spec: Spec) -> Any:
    message = struct_pb2.Struct()
    message.update(spec)
    return message


def struct_to_dict(message: Any) -> dict[str, Any]:
    """A Struct as plain JSON values, whole numbers as ints.

    Struct has one number type, double, so ``weight: 50`` arrives as 50.0; made an int here, the
    gRPC API stores the same spec as the REST API (whose JSON parser does the same) for the same
    document. A Struct is a tree (it cannot alias as YAML can), so this is linear in its size.
    """
    result: dict[str, Any] = _whole_numbers(json_format.MessageToDict(message))
    return result


def documents(structs: Sequence[Any]) -> list[dict[str, Any]]:
    """An ApplyRequest's documents as plain JSON values (see :func:`struct_to_dict`)."""
    return [struct_to_dict(struct) for struct in structs]


def timestamp(value: datetime) -> Any:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value)
    return message


def key_fields(key: ResourceKey) -> dict[str, str]:
    return {"kind": key.kind, "namespace": key.namespace, "name": key.name}


def resource(value: Resource) -> Any:
    message = resources_pb2.Resource(
        **key_fields(value.key), spec=struct(value.spec), resource_version=value.resource_version
    )
    message.update_time.CopyFrom(timestamp(value.update_time))
    return message


def apply_result(value: ApplyResult) -> Any:
    message = policy_pb2.ApplyResult(action=value.action.value, diff=value.diff)
    message.resource.CopyFrom(
        resources_pb2.Resource(**key_fields(value.key), resource_version=value.resource_version)
    )
    if value.spec is not None:
        message.resource.spec.CopyFrom(struct(value.spec))
    if value.update_time is not None:
        message.resource.update_time.CopyFrom(timestamp(value.update_time))
    return message


def revision(value: Revision) -> Any:
    message = resources_pb2.Revision(resource_version=value.resource_version, deleted=value.spec is None)
    message.time.CopyFrom(timestamp(value.time))
    if value.spec is not None:
        message.spec.CopyFrom(struct(value.spec))
    return message


def apply_response(results: Iterable[ApplyResult]) -> Any:
    return policy_pb2.ApplyResponse(results=[apply_result(r) for r in results])


def get_response(value: Resource) -> Any:
    return policy_pb2.GetResourceResponse(resource=resource(value))


def list_response(values: Iterable[Resource]) -> Any:
    return policy_pb2.ListResourcesResponse(resources=[resource(r) for r in values])


def delete_response(value: ApplyResult) -> Any:
    return policy_pb2.DeleteResourceResponse(result=apply_result(value))


def revisions_response(values: Iterable[Revision]) -> Any:
    return policy_pb2.ListRevisionsResponse(revisions=[revision(r) for r in values])


def rollback_response(value: ApplyResult) -> Any:
    return policy_pb2.RollbackResponse(result=apply_result(value))


_SIDECAR_SCALARS = (
    "node_id",
    "service",
    "namespace",
    "inbound_address",
    "identity",
    "applied_version",
    "sent_version",
    "state",
    "nack_reason",
    "connected",
    "serving",
    "admin_address",
    "applied_revision",
    "sent_revision",
    "identity_verified",
    "certificate_serial",
)


def sidecar_status(record: Any) -> Any:
    """A registry record (anything with SidecarStatus's field names as attributes) as a message."""
    message = policy_pb2.SidecarStatus()
    for name in _SIDECAR_SCALARS:
        value = getattr(record, name)
        setattr(message, name, str(value) if isinstance(value, str) else value)
    labels: Mapping[str, str] = record.labels
    message.labels.update(labels)
    last_seen = record.last_seen
    if isinstance(last_seen, datetime):
        message.last_seen.CopyFrom(timestamp(last_seen))
    not_after = record.certificate_not_after
    if isinstance(not_after, datetime):
        message.certificate_not_after.CopyFrom(timestamp(not_after))
    return message


def sidecars_response(value: Sidecars) -> Any:
    return policy_pb2.ListSidecarsResponse(
        sidecars=[sidecar_status(r) for r in value.records], store_revision=value.store_revision
    )


def to_json(message: Any) -> dict[str, Any]:
    """The protobuf JSON mapping (lowerCamelCase names, int64 as strings), every field present.

    Struct numbers are doubles, which Python's json would write as ``90.0``; whole numbers are
    written as ``90``, as protoc's other JSON printers (grpcurl's among them) do.
    """
    result: dict[str, Any] = _whole_numbers(
        json_format.MessageToDict(
            message, preserving_proto_field_name=False, always_print_fields_with_no_presence=True
        )
    )
    return result


def whole_number(value: float) -> int | float:
    """A float that is a whole number (and exactly representable) as an int; any other as it is."""
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def _whole_numbers(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    if isinstance(value, float):
        return whole_number(value)
    return value
