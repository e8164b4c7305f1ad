"""API errors as gRPC statuses: the one place the gRPC API decides a status code.

The status carries the error's message; the ``mesh-error`` trailer carries the same JSON object as
the REST API's ``error`` body (code, message, and document / field / reason when known), so a
client can point at the offending field without parsing the message.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

import grpc

from control_plane.api_errors import (
    ApiError,
    ConflictError,
    Internal,
    InvalidArgument,
    MethodNotAllowed,
    NotFoundError,
    PayloadTooLarge,
    PermissionDenied,
    Unauthenticated,
)

ERROR_TRAILER = "mesh-error"

# Most specific first: the first entry the error is an instance of decides.
STATUS_CODES: tuple[tuple[type[ApiError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (ConflictError, grpc.StatusCode.ABORTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (PayloadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (MethodNotAllowed, grpc.StatusCode.UNIMPLEMENTED),
    (Internal, grpc.StatusCode.INTERNAL),
)


def status_code(error: ApiError) -> grpc.StatusCode:
    for error_type, code in STATUS_CODES:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.UNKNOWN


def trailer(error: ApiError) -> tuple[tuple[str, str], ...]:
    # ASCII JSON: metadata values that are not -bin must be printable ASCII.
    return ((ERROR_TRAILER, json.dumps(error.to_json())),)


async def abort(context: Any, error: ApiError) -> NoReturn:
    """End the call with the error's status (grpc.aio's ``context.abort`` raises)."""
    context.set_trailing_metadata(trailer(error))
    await context.abort(status_code(error), error.message)
    raise AssertionError("context.abort returned")  # pragma: no cover
