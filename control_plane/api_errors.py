"""The policy API's errors: what went wrong, independent of the protocol that reports it.

The policy service and the authentication layer raise these; `control_plane.grpc_errors` turns
them into gRPC statuses (the status each ``code`` names) and `control_plane.rest_errors` into HTTP
responses (one table).
Every error has the same JSON form on both APIs (REST's response body, gRPC's ``mesh-error``
trailer)::

    {"code": "INVALID_ARGUMENT",
     "message": "VirtualService users: spec.http[0].route: weights sum to 90, must be 100",
     "document": "VirtualService users", "field": "spec.http[0].route",
     "reason": "weights sum to 90, must be 100"}

``code`` is the gRPC status name; ``document``, ``field`` and ``reason`` appear only when known.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ApiError(Exception):
    """An operation refused with a reason the caller can act on."""

    code: ClassVar[str] = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        document: str | None = None,
        field: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.document = document
        self.field = field
        self.reason = reason

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        for name in ("document", "field", "reason"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        return body


class InvalidArgument(ApiError):
    """The request or one of its documents is invalid (validation names document, field and reason)."""

    code = "INVALID_ARGUMENT"


class UnsupportedMediaType(InvalidArgument):
    """A REST body in a content type the endpoint does not take (HTTP 415)."""


class NotFoundError(ApiError):
    code = "NOT_FOUND"


class ConflictError(ApiError):
    """A stale resourceVersion: someone changed the resource since the caller read it."""

    code = "ABORTED"


class Unauthenticated(ApiError):
    """No bearer token, or one that does not verify (bad signature, expired, wrong audience...)."""

    code = "UNAUTHENTICATED"


class PermissionDenied(ApiError):
    """A valid token whose role may not perform the operation."""

    code = "PERMISSION_DENIED"


class PayloadTooLarge(ApiError):
    code = "RESOURCE_EXHAUSTED"


class MethodNotAllowed(ApiError):
    """A REST path that exists, called with a method it does not take (HTTP 405)."""

    code = "UNIMPLEMENTED"


INTERNAL_MESSAGE = "internal error (see the control plane's log)"


class Internal(ApiError):
    """A failure that is not the caller's fault (the store could not be read or written, a bug).
    The message says no more than what went wrong in general: the detail goes to the log."""

    code = "INTERNAL"

    def __init__(self, message: str = INTERNAL_MESSAGE) -> None:
        super().__init__(message)
