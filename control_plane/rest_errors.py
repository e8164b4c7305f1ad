"""API errors as HTTP responses: the one place the REST API decides a status code.

The body is ``{"error": {...}}`` with the object described in `control_plane.api_errors`, the
same one the gRPC API sends in its ``mesh-error`` trailer.
"""

from __future__ import annotations

from aiohttp import web

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
    UnsupportedMediaType,
)

# Most specific first: the first entry the error is an instance of decides.
HTTP_STATUSES: tuple[tuple[type[ApiError], int], ...] = (
    (UnsupportedMediaType, 415),
    (InvalidArgument, 400),
    (NotFoundError, 404),
    (ConflictError, 409),
    (Unauthenticated, 401),
    (PermissionDenied, 403),
    (PayloadTooLarge, 413),
    (MethodNotAllowed, 405),
    (Internal, 500),
)


def http_status(error: ApiError) -> int:
    for error_type, status in HTTP_STATUSES:
        if isinstance(error, error_type):
            return status
    return 500


def error_response(error: ApiError) -> web.Response:
    headers = {}
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="grpc-mesh"'
    return web.json_response({"error": error.to_json()}, status=http_status(error), headers=headers)
