"""The gRPC API (mesh.v1.PolicyService) on a real grpc.aio server on a loopback port: every
operation, the same shapes as REST, bad input, conflicts and authentication."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import json_format
from mesh.v1 import policy_pb2, policy_pb2_grpc

from control_plane import api_messages, grpc_api
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
from control_plane.auth import Role, mint_token
from control_plane.grpc_errors import ERROR_TRAILER, status_code
from control_plane.rest import MAX_BODY_BYTES, create_app
from control_plane.rest_errors import http_status
from control_plane.sqlite_store import STORE_FILE
from tests.support.policy_api import (
    USERS,
    Harness,
    SidecarStub,
    destination_rule,
    harness,
    register_sidecar,
    virtual_service,
)


@dataclass
class Api:
    stub: Any
    h: Harness

    def metadata(self, role: Role | None = Role.ADMIN) -> tuple[tuple[str, str], ...]:
        return () if role is None else (("authorization", f"Bearer {self.h.token(role)}"),)


@asynccontextmanager
async def grpc_api_for(h: Harness) -> AsyncIterator[Api]:
    server = grpc.aio.server(
        interceptors=[grpc_api.AuthInterceptor(h.verifier)],
        options=[("grpc.max_receive_message_length", MAX_BODY_BYTES)],
    )
    grpc_api.add_to_server(h.service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Api(policy_pb2_grpc.PolicyServiceStub(channel), h)
    finally:
        await server.stop(None)


def with_api(tmp_path: Path, body: Callable[[Api], Awaitable[None]]) -> None:
    async def main() -> None:
        with harness(tmp_path) as h:
            async with grpc_api_for(h) as api:
                await body(api)

    asyncio.run(main())


def documents(*docs: dict[str, Any]) -> Any:
    request = policy_pb2.ApplyRequest()
    for doc in docs:
        request.documents.add().update(doc)
    return request


async def refused(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str, dict[str, Any]]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    error = info.value
    trailers = dict(error.trailing_metadata() or ())
    detail = json.loads(trailers[ERROR_TRAILER]) if ERROR_TRAILER in trailers else {}
    return error.code(), error.details() or "", detail


def nacked_sidecar() -> SidecarStub:
    """A sidecar that rejected the snapshot sent for revision 5 and serves revision 3's."""
    return SidecarStub(
        node_id="users-v1-b", sent_version="5-0123456789ab", sent_revision=5, state="NACK", nack_reason="bad"
    )


def test_every_operation(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        stub, md = api.stub, api.metadata()
        response = await stub.Apply(documents(virtual_service(), destination_rule()), metadata=md)
        assert [(r.action, r.resource.resource_version) for r in response.results] == [
            ("created", 1),
            ("created", 2),
        ]
        assert response.results[0].diff.startswith("--- /dev/null")
        assert api.h.notifier.calls == 1

        got = await stub.GetResource(
            policy_pb2.GetResourceRequest(kind="VirtualService", name="users"), metadata=md
        )
        assert got.resource.namespace == "default" and got.resource.resource_version == 1
        assert json_format.MessageToDict(got.resource.spec)["hosts"] == ["users"]

        listed = await stub.ListResources(
            policy_pb2.ListResourcesRequest(kind="DestinationRule"), metadata=md
        )
        assert [r.name for r in listed.resources] == ["users"]

        dry = await stub.Apply(documents(virtual_service(weights=(50, 50))), metadata=md)
        assert dry.results[0].action == "updated"
        dry_run = policy_pb2.ApplyRequest(documents=documents(virtual_service()).documents, dry_run=True)
        assert (await stub.Apply(dry_run, metadata=md)).results[0].action == "updated"
        assert api.h.store.revision() == 3

        key = {"kind": "VirtualService", "namespace": "default", "name": "users"}
        revisions = await stub.ListRevisions(policy_pb2.ListRevisionsRequest(**key), metadata=md)
        assert [r.resource_version for r in revisions.revisions] == [1, 3]
        rolled = await stub.Rollback(policy_pb2.RollbackRequest(**key, to_resource_version=1), metadata=md)
        assert (rolled.result.action, rolled.result.resource.resource_version) == ("updated", 4)
        deleted = await stub.DeleteResource(
            policy_pb2.DeleteResourceRequest(**key, resource_version=4), metadata=md
        )
        assert (deleted.result.action, deleted.result.resource.resource_version) == ("deleted", 5)
        assert not deleted.result.resource.HasField("spec")
        revisions = await stub.ListRevisions(policy_pb2.ListRevisionsRequest(**key), metadata=md)
        assert revisions.revisions[-1].deleted and not revisions.revisions[-1].HasField("spec")

        register_sidecar(api.h.registry)
        api.h.registry.records.append(nacked_sidecar())
        sidecars = await stub.ListSidecars(policy_pb2.ListSidecarsRequest(), metadata=api.metadata(Role.READ))
        assert sidecars.store_revision == 5
        sidecar, nacked = sorted(sidecars.sidecars, key=lambda s: s.node_id)
        assert (sidecar.node_id, sidecar.state, sidecar.applied_revision) == ("users-v1-a", "ACK", 3)
        assert sidecar.sent_revision == 3
        assert (nacked.node_id, nacked.state, nacked.nack_reason) == ("users-v1-b", "NACK", "bad")
        assert (nacked.applied_revision, nacked.sent_revision) == (3, 5)
        assert dict(sidecar.labels) == {"version": "v1"} and sidecar.connected and sidecar.serving
        assert sidecar.last_seen.ToDatetime().isoformat() == "2030-06-01T12:00:00"

    with_api(tmp_path, body)


def test_grpc_and_rest_answer_with_the_same_shapes(tmp_path: Path) -> None:
    async def main() -> None:
        with harness(tmp_path) as h:
            async with (
                grpc_api_for(h) as api,
                TestClient(TestServer(create_app(h.service, h.verifier))) as client,
            ):
                headers = {"Authorization": f"Bearer {h.token()}"}
                applied = await api.stub.Apply(documents(virtual_service()), metadata=api.metadata())
                get = await api.stub.GetResource(
                    policy_pb2.GetResourceRequest(kind="VirtualService", namespace="default", name="users"),
                    metadata=api.metadata(),
                )
                async with client.get("/api/v1/resources/VirtualService/default/users", headers=headers) as r:
                    assert await r.json() == api_messages.to_json(get)
                async with client.post(
                    "/api/v1/apply", json={"documents": [virtual_service()]}, headers=headers
                ) as r:
                    rest_applied = await r.json()
                assert rest_applied["results"][0]["action"] == "unchanged"
                assert (
                    rest_applied["results"][0]["resource"]
                    == api_messages.to_json(applied)["results"][0]["resource"]
                )
                async with client.get("/api/v1/resources/VirtualService/default/nope", headers=headers) as r:
                    rest_error = (await r.json())["error"]
                _, _, grpc_error = await refused(
                    api.stub.GetResource(
                        policy_pb2.GetResourceRequest(
                            kind="VirtualService", namespace="default", name="nope"
                        ),
                        metadata=api.metadata(),
                    )
                )
                assert (
                    rest_error
                    == grpc_error
                    == {"code": "NOT_FOUND", "message": "VirtualService default/nope not found"}
                )

    asyncio.run(main())


BAD_DOCUMENTS = [
    (
        "bad weights",
        virtual_service(weights=(80, 10)),
        "spec.http[0].route",
        "weights sum to 90, must be 100",
    ),
    ("unknown field", virtual_service(extra_spec={"gateways": ["mesh"]}), "spec.gateways", "not supported"),
    ("unknown kind", {**virtual_service(), "kind": "Gateway"}, "kind", "Gateway"),
    ("no spec", {k: v for k, v in virtual_service().items() if k != "spec"}, "spec", "required"),
]


@pytest.mark.parametrize(
    ("case", "document", "field", "reason"), BAD_DOCUMENTS, ids=[c[0] for c in BAD_DOCUMENTS]
)
def test_bad_documents_are_invalid_argument_and_change_nothing(
    tmp_path: Path, case: str, document: dict[str, Any], field: str, reason: str
) -> None:
    async def body(api: Api) -> None:
        await api.stub.Apply(documents(destination_rule()), metadata=api.metadata())
        before, pushes = api.h.fingerprint(), api.h.notifier.calls
        code, details, error = await refused(api.stub.Apply(documents(document), metadata=api.metadata()))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert error["code"] == "INVALID_ARGUMENT" and error["message"] == details
        assert error["field"] == field and reason in error["reason"] and error["document"] in details
        assert api.h.fingerprint() == before and api.h.notifier.calls == pushes

    with_api(tmp_path, body)


def test_an_oversize_request_is_resource_exhausted(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        big = virtual_service(extra_spec={"x": "y" * MAX_BODY_BYTES})
        code, details, _ = await refused(api.stub.Apply(documents(big), metadata=api.metadata()))
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, details
        assert api.h.store.revision() == 0 and api.h.notifier.calls == 0

    with_api(tmp_path, body)


def test_bad_requests_on_the_other_methods(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        stub, md = api.stub, api.metadata()
        await stub.Apply(documents(virtual_service()), metadata=md)
        key = {"kind": "VirtualService", "namespace": "default", "name": "users"}
        invalid, not_found = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
        cases: list[tuple[Awaitable[Any], grpc.StatusCode, str]] = [
            (
                stub.GetResource(policy_pb2.GetResourceRequest(kind="Nope", name="x"), metadata=md),
                invalid,
                "unknown kind",
            ),
            (
                stub.GetResource(policy_pb2.GetResourceRequest(kind="VirtualService"), metadata=md),
                invalid,
                "a name is required",
            ),
            (
                stub.Rollback(policy_pb2.RollbackRequest(**key), metadata=md),
                invalid,
                "to_resource_version is required",
            ),
            (
                stub.Rollback(policy_pb2.RollbackRequest(**key, to_resource_version=8), metadata=md),
                not_found,
                "has no revision 8",
            ),
            (
                stub.Rollback(
                    policy_pb2.RollbackRequest(**key, to_resource_version=1, resource_version=-1), metadata=md
                ),
                invalid,
                "resource_version must not be negative",
            ),
            (
                stub.Rollback(
                    policy_pb2.RollbackRequest(**key, to_resource_version=1, resource_version=7), metadata=md
                ),
                grpc.StatusCode.ABORTED,
                "resourceVersion 7 is stale (current is 1)",
            ),
            (
                stub.DeleteResource(
                    policy_pb2.DeleteResourceRequest(**key, resource_version=-1), metadata=md
                ),
                invalid,
                "negative",
            ),
            (
                stub.DeleteResource(policy_pb2.DeleteResourceRequest(**key, resource_version=9), metadata=md),
                grpc.StatusCode.ABORTED,
                "is stale",
            ),
            (
                stub.ListRevisions(
                    policy_pb2.ListRevisionsRequest(kind="VirtualService", name="gone"), metadata=md
                ),
                not_found,
                "never existed",
            ),
        ]
        for call, code, message in cases:
            got, details, _ = await refused(call)
            assert (got, message in details) == (code, True), details
        assert api.h.store.revision() == 1

    with_api(tmp_path, body)


def test_concurrent_applies_with_a_stale_version_one_wins_the_other_is_aborted(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        md = api.metadata()
        await api.stub.Apply(documents(virtual_service()), metadata=md)

        async def attempt(weights: tuple[int, int]) -> Any:
            try:
                return await api.stub.Apply(
                    documents(virtual_service(weights=weights, resource_version=1)), metadata=md
                )
            except grpc.aio.AioRpcError as error:
                return error

        outcomes = await asyncio.gather(attempt((60, 40)), attempt((40, 60)))
        errors = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        assert len(errors) == 1, outcomes
        assert errors[0].code() is grpc.StatusCode.ABORTED
        assert "resourceVersion 1 is stale (current is 2)" in (errors[0].details() or "")
        assert [r.resource_version for r in api.h.store.history(USERS)] == [1, 2]

    with_api(tmp_path, body)


def test_authentication_and_roles(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        h = api.h
        stranger = ec.generate_private_key(ec.SECP256R1())
        forged = mint_token(stranger, role=Role.ADMIN, subject="mallory", now=h.clock())
        expired = h.token(Role.ADMIN, ttl=timedelta(minutes=1))
        h.clock.advance(timedelta(minutes=2))
        apply = documents(virtual_service())
        for metadata, message in [
            ((), "no bearer token"),
            ((("authorization", f"Bearer {expired}"),), "expired at"),
            ((("authorization", f"Bearer {forged}"),), "signature does not verify"),
            ((("authorization", "Basic abc"),), "must be 'Bearer <token>'"),
        ]:
            code, details, error = await refused(api.stub.Apply(apply, metadata=metadata))
            assert code is grpc.StatusCode.UNAUTHENTICATED and message in details
            assert error["code"] == "UNAUTHENTICATED"
        code, details, _ = await refused(api.stub.Apply(apply, metadata=api.metadata(Role.READ)))
        assert code is grpc.StatusCode.PERMISSION_DENIED and "role 'read'" in details
        key = {"kind": "VirtualService", "namespace": "default", "name": "users"}
        for call in (
            api.stub.DeleteResource(
                policy_pb2.DeleteResourceRequest(**key), metadata=api.metadata(Role.READ)
            ),
            api.stub.Rollback(
                policy_pb2.RollbackRequest(**key, to_resource_version=1), metadata=api.metadata(Role.READ)
            ),
        ):
            assert (await refused(call))[0] is grpc.StatusCode.PERMISSION_DENIED
        assert h.store.revision() == 0 and h.notifier.calls == 0
        reader = api.metadata(Role.READ)
        await api.stub.ListResources(policy_pb2.ListResourcesRequest(), metadata=reader)
        await api.stub.ListSidecars(policy_pb2.ListSidecarsRequest(), metadata=reader)
        for method in grpc_api.METHOD_OPERATIONS:
            call = getattr(api.stub, method)
            request_type = getattr(policy_pb2, f"{method}Request")
            assert (await refused(call(request_type())))[0] is grpc.StatusCode.UNAUTHENTICATED, method

    with_api(tmp_path, body)


def test_the_interceptor_covers_exactly_the_services_methods() -> None:
    service = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"]
    assert set(grpc_api.METHOD_OPERATIONS) == {m.name for m in service.methods}


ALL_ERRORS: list[ApiError] = [
    InvalidArgument("x"),
    UnsupportedMediaType("x"),
    NotFoundError("x"),
    ConflictError("x"),
    Unauthenticated("x"),
    PermissionDenied("x"),
    PayloadTooLarge("x"),
    MethodNotAllowed("x"),
    Internal("x"),
]


def test_whole_number_floats_from_a_struct_are_stored_as_ints_as_over_rest(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        # A Struct has only doubles: the weights arrive as 90.0 and 10.0.
        await api.stub.Apply(documents(virtual_service()), metadata=api.metadata())
        stored = api.h.store.get(USERS)
        assert stored is not None and type(stored.spec["http"][0]["route"][0]["weight"]) is int
        assert (await api.h.service.apply([virtual_service()]))[0].action.value == "unchanged"

    with_api(tmp_path, body)


def test_rollback_with_a_resource_version(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        md = api.metadata()
        await api.stub.Apply(documents(virtual_service()), metadata=md)
        await api.stub.Apply(documents(virtual_service(weights=(50, 50))), metadata=md)
        key = {"kind": "VirtualService", "namespace": "default", "name": "users"}
        code, details, _ = await refused(
            api.stub.Rollback(
                policy_pb2.RollbackRequest(**key, to_resource_version=1, resource_version=1), metadata=md
            )
        )
        assert code is grpc.StatusCode.ABORTED and "resourceVersion 1 is stale (current is 2)" in details
        rolled = await api.stub.Rollback(
            policy_pb2.RollbackRequest(**key, to_resource_version=1, resource_version=2), metadata=md
        )
        assert (rolled.result.action, rolled.result.resource.resource_version) == ("updated", 3)

    with_api(tmp_path, body)


def test_an_unexpected_exception_is_internal_with_a_generic_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(api: Api) -> None:
        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise KeyError(f"{tmp_path}: the secret detail")

        api.h.service.list_resources = broken  # type: ignore[method-assign]
        code, details, error = await refused(
            api.stub.ListResources(policy_pb2.ListResourcesRequest(), metadata=api.metadata())
        )
        assert (code, details) == (grpc.StatusCode.INTERNAL, "internal error (see the control plane's log)")
        assert error == {"code": "INTERNAL", "message": details}

    with caplog.at_level(logging.ERROR):
        with_api(tmp_path, body)
    assert "mesh.v1.PolicyService/ListResources failed" in caplog.text
    assert "the secret detail" in caplog.text


def test_a_store_failure_does_not_show_the_store_path(tmp_path: Path) -> None:
    async def body(api: Api) -> None:
        api.h.store.close()
        code, details, error = await refused(
            api.stub.Apply(documents(virtual_service()), metadata=api.metadata())
        )
        assert (code, details) == (grpc.StatusCode.INTERNAL, "the store failed (see the control plane's log)")
        assert str(tmp_path / STORE_FILE) not in json.dumps(error)

    with_api(tmp_path, body)


def test_each_error_has_one_code_on_both_apis() -> None:
    expected = {
        InvalidArgument: 400,
        UnsupportedMediaType: 415,
        NotFoundError: 404,
        ConflictError: 409,
        Unauthenticated: 401,
        PermissionDenied: 403,
        PayloadTooLarge: 413,
        MethodNotAllowed: 405,
        Internal: 500,
    }
    for error in ALL_ERRORS:
        assert status_code(error).name == error.code, error
        assert http_status(error) == expected[type(error)], error
    assert status_code(ApiError("x")) is grpc.StatusCode.UNKNOWN
