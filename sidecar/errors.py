"""Typed errors the sidecar raises while deciding a call, and the one place they become statuses."""

from __future__ import annotations

from sidecar.grpc_wire import Code


class MeshError(Exception):
    """An error the sidecar itself reports to the caller. Its message is safe to show callers:
    it never carries internal addresses or debug detail."""

    code: Code = Code.INTERNAL
    # False when retrying can only make things worse (the call was refused to shed load): the
    # retry loop must give the caller this status instead.
    retryable: bool = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NoRoute(MeshError):
    code = Code.UNAVAILABLE


class UpstreamUnavailable(MeshError):
    code = Code.UNAVAILABLE


class Overflow(MeshError):
    """Over a DestinationRule `connectionPool` limit; `kind` is "requests" or "pending"."""

    code = Code.UNAVAILABLE
    retryable = False

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class CircuitOpen(MeshError):
    """The destination's circuit breaker is open (or half-open with its probes out)."""

    code = Code.UNAVAILABLE
    retryable = False


class DeadlineExceeded(MeshError):
    code = Code.DEADLINE_EXCEEDED


class MessageTooLarge(MeshError):
    code = Code.RESOURCE_EXHAUSTED


class MalformedRequest(MeshError):
    code = Code.INTERNAL


class Unauthenticated(MeshError):
    code = Code.UNAUTHENTICATED


class PermissionDenied(MeshError):
    code = Code.PERMISSION_DENIED


class RateLimited(MeshError):
    code = Code.RESOURCE_EXHAUSTED


class RateLimitUnavailable(MeshError):
    """A GLOBAL rate limit that fails closed, while its Redis is unreachable."""

    code = Code.UNAVAILABLE


class FaultAbort(MeshError):
    """A fault injected by a route's `fault.abort`: its status is the configured one."""

    def __init__(self, code: int) -> None:
        super().__init__("fault injected by the mesh (fault.abort)")
        self.code = Code(code)


def status_for(error: MeshError) -> tuple[int, str]:
    """The gRPC status (code, message) a caller sees for an error."""
    return int(error.code), error.message
