"""The policy API over gRPC (mesh.v1.PolicyService): a thin adapter over PolicyService.

Requests are turned into the service's arguments, results into messages (`api_messages`), and
API errors into statuses (`grpc_errors`); any other exception is logged and answered INTERNAL with
a generic message, as the REST API answers 500. :class:`AuthInterceptor` checks the bearer token
of every PolicyService call; other services on the same server (discovery, health, reflection)
are left alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from mesh.v1 import policy_pb2, policy_pb2_grpc

from control_plane import api_messages
from control_plane.api_errors import ApiError, Internal, InvalidArgument
from control_plane.auth import Operation, TokenVerifier, authorize
from control_plane.grpc_errors import abort
from control_plane.policy_service import PolicyService
from control_plane.resources import ResourceKey

log = logging.getLogger(__name__)

SERVICE_NAME: str = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name

# Every method of mesh.v1.PolicyService and the operation (hence the role) it needs.
METHOD_OPERATIONS: dict[str, Operation] = {
    "Apply": Operation.APPLY,
    "GetResource": Operation.GET,
    "ListResources": Operation.LIST,
    "DeleteResource": Operation.DELETE,
    "ListRevisions": Operation.HISTORY,
    "Rollback": Operation.ROLLBACK,
    "ListSidecars": Operation.SIDECARS,
}


def _key(request: Any) -> ResourceKey:
    return ResourceKey(request.kind, request.namespace, request.name)


def _expected_version(request: Any) -> int | None:
    """A request's ``resource_version`` precondition: 0 (unset) is none."""
    if request.resource_version < 0:
        raise InvalidArgument("resource_version must not be negative", field="resource_version")
    return int(request.resource_version) or None


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):  # type: ignore[misc]
    def __init__(self, service: PolicyService) -> None:
        self._service = service

    async def _call(self, method: str, context: Any, work: Awaitable[Any]) -> Any:
        try:
            return await work
        except ApiError as error:
            await abort(context, error)
        except Exception:
            # Not UNKNOWN with the exception's text, as grpc.aio would answer: that is internals.
            log.exception("%s/%s failed", SERVICE_NAME, method)
            await abort(context, Internal())

    async def Apply(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            # A big request takes a moment to convert: not on the event loop.
            documents = await asyncio.to_thread(api_messages.documents, request.documents)
            return api_messages.apply_response(await self._service.apply(documents, dry_run=request.dry_run))

        return await self._call("Apply", context, work())

    async def GetResource(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            return api_messages.get_response(await self._service.get(_key(request)))

        return await self._call("GetResource", context, work())

    async def ListResources(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            return api_messages.list_response(
                await self._service.list_resources(request.kind, request.namespace)
            )

        return await self._call("ListResources", context, work())

    async def DeleteResource(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            result = await self._service.delete(
                _key(request), resource_version=_expected_version(request), dry_run=request.dry_run
            )
            return api_messages.delete_response(result)

        return await self._call("DeleteResource", context, work())

    async def ListRevisions(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            return api_messages.revisions_response(await self._service.history(_key(request)))

        return await self._call("ListRevisions", context, work())

    async def Rollback(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            if request.to_resource_version <= 0:
                raise InvalidArgument(
                    "to_resource_version is required (a revision from ListRevisions)",
                    field="to_resource_version",
                    reason="required",
                )
            result = await self._service.rollback(
                _key(request),
                request.to_resource_version,
                resource_version=_expected_version(request),
                dry_run=request.dry_run,
            )
            return api_messages.rollback_response(result)

        return await self._call("Rollback", context, work())

    async def ListSidecars(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            return api_messages.sidecars_response(await self._service.sidecars())

        return await self._call("ListSidecars", context, work())


def add_to_server(service: PolicyService, server: Any) -> None:
    policy_pb2_grpc.add_PolicyServiceServicer_to_server(PolicyServicer(service), server)


def _refuse(error: ApiError) -> Any:
    async def handler(request: Any, context: Any) -> None:
        await abort(context, error)

    # Every PolicyService method is unary-unary; the request is never decoded.
    return grpc.unary_unary_rpc_method_handler(handler)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Bearer-token authentication and role checks for mesh.v1.PolicyService calls only."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier
        self._prefix = f"/{SERVICE_NAME}/"

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        method: str = handler_call_details.method
        if not method.startswith(self._prefix):
            return await continuation(handler_call_details)
        operation = METHOD_OPERATIONS.get(method[len(self._prefix) :])
        if operation is None:  # unknown method: let gRPC answer UNIMPLEMENTED
            return await continuation(handler_call_details)
        authorization = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                authorization = value if isinstance(value, str) else value.decode("ascii", "replace")
                break
        try:
            authorize(self._verifier.authenticate(authorization), operation)
        except ApiError as error:
            return _refuse(error)
        return await continuation(handler_call_details)
