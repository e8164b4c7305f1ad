"""API errors as gRPC statuses: each error's ``code`` names its status.

The status carries the error's message; the ``mesh-error`` trailer carries the same JSON object as
the REST API's ``error`` body (code, message, and document / field / reason when known), so a
client can point at the offending field without parsing the message.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

import grpc

from control_plane.api_errors import ApiError

ERROR_TRAILER = "mesh-error"


def status_code(error: ApiError) -> grpc.StatusCode:
    """The status named by the error's code (every ApiError's code is a gRPC status name)."""
    return grpc.StatusCode[error.code]


def trailer(error: ApiError) -> tuple[tuple[str, str], ...]:
    # ASCII JSON: metadata values that are not -bin must be printable ASCII.
    return ((ERROR_TRAILER, json.dumps(error.to_json())),)


async def abort(context: Any, error: ApiError) -> NoReturn:
    """End the call with the error's status (grpc.aio's ``context.abort`` raises)."""
    context.set_trailing_metadata(trailer(error))
    await context.abort(status_code(error), error.message)
    raise AssertionError("context.abort returned")  # pragma: no cover
