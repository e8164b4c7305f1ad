"""Typed errors of the example services and the one place they become gRPC statuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc


class ServiceError(Exception):
    """A failure the caller should see as a gRPC status with this message."""

    code: Any = grpc.StatusCode.INTERNAL


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class UpstreamError(ServiceError):
    """A service this one depends on failed; its status code is passed on to our caller."""

    def __init__(self, code: Any, message: str) -> None:
        super().__init__(message)
        self.code = code


@asynccontextmanager
async def reported_as_status(context: Any) -> AsyncIterator[None]:
    """Turn a ServiceError raised in the block into the RPC's final status (aborting the call)."""
    try:
        yield
    except ServiceError as error:
        await context.abort(error.code, str(error))
