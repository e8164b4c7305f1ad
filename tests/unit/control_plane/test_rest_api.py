"""The REST API on aiohttp's test server: every operation, the bad-input list (each refused with a
clear error, the store unchanged and nothing pushed), conflicts, and authentication."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric import ec

from control_plane.auth import Role, mint_token
from control_plane.openapi import SCHEMAS
from control_plane.rest import MAX_BODY_BYTES, ROUTES, create_app
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

USERS_PATH = "/api/v1/resources/VirtualService/default/users"


@asynccontextmanager
async def rest_client(h: Harness) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(h.service, h.verifier))) as client:
        yield client


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def with_client(tmp_path: Path, body: Callable[[Harness, TestClient[Any, Any]], Awaitable[None]]) -> None:
    async def main() -> None:
        with harness(tmp_path) as h:
            async with rest_client(h) as client:
                await body(h, client)

    asyncio.run(main())


async def call(
    client: TestClient[Any, Any], method: str, path: str, token: str | None, **kwargs: Any
) -> tuple[int, Any]:
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers.update(auth(token))
    async with client.request(method, path, headers=headers, **kwargs) as response:
        text = await response.text()
        assert response.content_type == "application/json", text
        return response.status, json.loads(text)


def nacked_sidecar() -> SidecarStub:
    """A sidecar that rejected the snapshot sent for revision 5 and serves revision 3's."""
    return SidecarStub(
        node_id="users-v1-b", sent_version="5-0123456789ab", sent_revision=5, state="NACK", nack_reason="bad"
    )


def test_every_operation_round_trips(tmp_path: Path) -> None:
    async def body(h: Harness, client: TestClient[Any, Any]) -> None:
        admin = h.token(Role.ADMIN)
        status, data = await call(
            client,
            "POST",
            "/api/v1/apply",
            admin,
            json={"documents": [virtual_service(), destination_rule()]},
        )
        assert status == 200, data
        first = data["results"][0]
        assert first["action"] == "created" and first["diff"].startswith("--- /dev/null")
        assert first["resource"] == {
            "kind": "VirtualService",
            "namespace": "default",
            "name": "users",
            "spec": virtual_service()["spec"],
            "resourceVersion": "1",
            "updateTime": "2030-06-01T12:00:00Z",
        }
        assert h.notifier.calls == 1

        status, data = await call(client, "GET", "/api/v1/resources?kind=VirtualService", admin)
        assert status == 200 and [r["name"] for r in data["resources"]] == ["users"]
        status, data = await call(client, "GET", "/api/v1/resources?namespace=default", admin)
        assert [r["kind"] for r in data["resources"]] == ["DestinationRule", "VirtualService"]

        status, data = await call(client, "GET", USERS_PATH, admin)
        assert status == 200 and data["resource"]["spec"]["http"][0]["route"][0]["weight"] == 90

        updated = virtual_service(weights=(50, 50), resource_version="1")
        status, data = await call(client, "POST", "/api/v1/apply", admin, json={"documents": [updated]})
        assert (status, data["results"][0]["action"], data["results"][0]["resource"]["resourceVersion"]) == (
            200,
            "updated",
            "3",
        )

        status, data = await call(client, "GET", USERS_PATH + "/revisions", admin)
        assert [(r["resourceVersion"], r["deleted"]) for r in data["revisions"]] == [
            ("1", False),
            ("3", False),
        ]

        status, data = await call(
            client, "POST", USERS_PATH + "/rollback", admin, json={"toResourceVersion": 1}
        )
        assert status == 200 and data["result"]["action"] == "updated"
        assert data["result"]["resource"]["resourceVersion"] == "4"

        status, data = await call(client, "DELETE", USERS_PATH + "?resourceVersion=4&dryRun=true", admin)
        assert status == 200 and data["result"]["action"] == "deleted"
        status, data = await call(client, "DELETE", USERS_PATH + "?resourceVersion=4", admin)
        assert status == 200 and data["result"]["resource"]["resourceVersion"] == "5"
        assert "spec" not in data["result"]["resource"]
        status, data = await call(client, "GET", USERS_PATH + "/revisions", admin)
        assert data["revisions"][-1] == {
            "resourceVersion": "5",
            "time": "2030-06-01T12:00:00Z",
            "deleted": True,
        }

        status, data = await call(
            client, "POST", USERS_PATH + "/rollback", admin, json={"toResourceVersion": "3"}
        )
        assert status == 200 and data["result"]["action"] == "created"

        register_sidecar(h.registry)
        h.registry.records.append(nacked_sidecar())
        status, data = await call(client, "GET", "/api/v1/sidecars", h.token(Role.READ))
        assert status == 200 and data["storeRevision"] == "6"
        sidecar, nacked = sorted(data["sidecars"], key=lambda s: str(s["nodeId"]))
        assert sidecar["nodeId"] == "users-v1-a" and sidecar["state"] == "ACK"
        assert sidecar["labels"] == {"version": "v1"} and sidecar["appliedRevision"] == "3"
        assert sidecar["sentRevision"] == "3"
        assert sidecar["lastSeen"] == "2030-06-01T12:00:00Z"
        # Which revision the NACKed snapshot was built for: 5, while it still serves 3.
        assert (nacked["nodeId"], nacked["state"], nacked["nackReason"]) == ("users-v1-b", "NACK", "bad")
        assert (nacked["appliedRevision"], nacked["sentRevision"]) == ("3", "5")

    with_client(tmp_path, body)


def test_yaml_bodies_and_dry_runs(tmp_path: Path) -> None:
    async def body(h: Harness, client: TestClient[Any, Any]) -> None:
        admin = h.token()
        text = yaml.safe_dump_all([virtual_service(), destination_rule()])
        yaml_headers = {"Content-Type": "application/yaml"}
        status, data = await call(
            client, "POST", "/api/v1/apply?dryRun=true", admin, data=text, headers=yaml_headers
        )
        assert status == 200 and [r["action"] for r in data["results"]] == ["created", "created"]
        assert data["results"][0]["resource"]["resourceVersion"] == "0"
        status, data = await call(
            client, "POST", "/api/v1/apply", admin, json={"documents": [virtual_service()], "dryRun": True}
        )
        assert status == 200 and h.store.revision() == 0 and h.notifier.calls == 0
        status, data = await call(
            client,
            "POST",
            "/api/v1/apply",
            admin,
            data=text,
            headers={"Content-Type": "text/yaml; charset=utf-8"},
        )
        assert status == 200 and h.store.revision() == 2 and h.notifier.calls == 1
        status, data = await call(
            client, "POST", USERS_PATH + "/rollback", admin, json={"toResourceVersion": 1, "dryRun": True}
        )
        assert status == 200 and data["result"]["action"] == "unchanged"

    with_client(tmp_path, body)


DEEP: Any = []
for _ in range(900):
    DEEP = [DEEP]

OVERSIZE = {"documents": [virtual_service(extra_spec={"x": "y" * MAX_BODY_BYTES})]}


async def megabytes(count: int) -> AsyncIterator[bytes]:
    """A body without a Content-Length (sent chunked)."""
    for _ in range(count):
        yield b" " * (1 << 20)


# (name, request kwargs (a callable value is called for a fresh one), status, code, what the message
# must say: parts split by " * ", in any order)
BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str, str]] = [
    (
        "invalid YAML",
        {
            "data": "kind: VirtualService\nmetadata: [unclosed\n",
            "headers": {"Content-Type": "application/yaml"},
        },
        400,
        "INVALID_ARGUMENT",
        "document 1: invalid YAML",
    ),
    (
        "unknown field",
        {"json": {"documents": [virtual_service(extra_spec={"gateways": ["mesh"]})]}},
        400,
        "INVALID_ARGUMENT",
        "VirtualService users: spec.gateways: ",
    ),
    (
        "bad weights",
        {"json": {"documents": [virtual_service(weights=(80, 10))]}},
        400,
        "INVALID_ARGUMENT",
        "VirtualService users: spec.http[0].route: weights sum to 90, must be 100",
    ),
    (
        "unknown kind",
        {"json": {"documents": [{**virtual_service(), "kind": "Gateway"}]}},
        400,
        "INVALID_ARGUMENT",
        "document 1: kind: * Gateway * supported kinds: VirtualService,",
    ),
    (
        "oversize body",
        {
            "data": lambda: io.BytesIO(json.dumps(OVERSIZE).encode()),
            "headers": {"Content-Type": "application/json"},
        },
        413,
        "RESOURCE_EXHAUSTED",
        f"the limit is {MAX_BODY_BYTES} bytes",
    ),
    (
        "oversize chunked body",
        {"data": lambda: megabytes(5), "headers": {"Content-Type": "application/json"}},
        413,
        "RESOURCE_EXHAUSTED",
        "request body too large",
    ),
    (
        "malformed JSON",
        {"data": '{"documents": [}', "headers": {"Content-Type": "application/json"}},
        400,
        "INVALID_ARGUMENT",
        "malformed JSON: Expecting value at line 1 column 16",
    ),
    (
        "NaN in JSON",
        {"data": '{"documents": [NaN]}', "headers": {"Content-Type": "application/json"}},
        400,
        "INVALID_ARGUMENT",
        "malformed JSON: NaN is not valid JSON",
    ),
    (
        "JSON nested too deeply to parse",
        {
            "data": '{"documents": ' + "[" * 100_000 + "]" * 100_000 + "}",
            "headers": {"Content-Type": "application/json"},
        },
        400,
        "INVALID_ARGUMENT",
        "malformed JSON: nested too deeply",
    ),
    (
        "a deeply nested document",
        {
            "data": json.dumps({"documents": [virtual_service(extra_spec={"x": DEEP})]}),
            "headers": {"Content-Type": "application/json"},
        },
        400,
        "INVALID_ARGUMENT",
        "VirtualService users: * nested",
    ),
    (
        "not UTF-8",
        {"data": b'{"documents": ["\xff"]}', "headers": {"Content-Type": "application/json"}},
        400,
        "INVALID_ARGUMENT",
        "not UTF-8",
    ),
    (
        "body not an object",
        {"json": [virtual_service()]},
        400,
        "INVALID_ARGUMENT",
        "must be a JSON object, got list",
    ),
    (
        "documents not a list",
        {"json": {"documents": virtual_service()}},
        400,
        "INVALID_ARGUMENT",
        "documents must be a list",
    ),
    (
        "unknown body field",
        {"json": {"documents": [virtual_service()], "dry_run": True}},
        400,
        "INVALID_ARGUMENT",
        "unknown field 'dry_run' in the request body (expected: documents, dryRun)",
    ),
    (
        "dryRun not a boolean",
        {"json": {"documents": [virtual_service()], "dryRun": "yes"}},
        400,
        "INVALID_ARGUMENT",
        "dryRun must be true or false",
    ),
    (
        "wrong content type",
        {"data": "documents", "headers": {"Content-Type": "text/plain"}},
        415,
        "INVALID_ARGUMENT",
        "content type 'text/plain' is not accepted here",
    ),
    (
        "no documents",
        {"json": {"documents": []}},
        400,
        "INVALID_ARGUMENT",
        "no documents to apply",
    ),
]


@pytest.mark.parametrize(
    ("case", "request_kwargs", "status", "code", "message"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_a_bad_apply_is_refused_clearly_and_changes_nothing(
    tmp_path: Path, case: str, request_kwargs: dict[str, Any], status: int, code: str, message: str
) -> None:
    async def body(h: Harness, client: TestClient[Any, Any]) -> None:
        admin = h.token()
        assert (await call(client, "POST", "/api/v1/apply", admin, json={"documents": [destination_rule()]}))[
            0
        ] == 200
        before, pushes = h.fingerprint(), h.notifier.calls
        kwargs = {k: v() if callable(v) else v for k, v in request_kwargs.items()}
        got_status, data = await call(client, "POST", "/api/v1/apply", admin, **kwargs)
        assert got_status == status, data
        assert data["error"]["code"] == code
        assert all(part in data["error"]["message"] for part in message.split(" * ")), data
        assert h.fingerprint() == before
        assert h.notifier.calls == pushes

    with_client(tmp_path, body)


def test_a_validation_error_names_document_field_and_reason(tmp_path: Path) -> None:
    async def body(h: Harness, client: TestClient[Any, Any]) -> None:
        status, data = await call(
            client,
            "POST",
            "/api/v1/apply",
            h.token(),
            json={"documents": [virtual_service(weights=(80, 10))]},
        )
        assert (status, data) == (
            400,
            {
                "error": {
                    "code": "INVALID_ARGUMENT",
                    "message": "VirtualService users: spec.http[0].route: weights sum to 90, must be 100",
                    "document": "VirtualService users",
                    "field": "spec.http[0].route",
                    "reason": "weights sum to 90, must be 100",
                }
            },
        )

    with_client(tmp_path, body)


def test_bad_parameters_on_the_other_routes(tmp_path: Path) -> None:
    async def body(h: Harness, client: TestClient[Any, Any]) -> None:
        admin = h.token()
        await call(client, "POST", "/api/v1/apply", admin, json={"documents": [virtual_service()]})
        cases: list[tuple[str, str, dict[str, Any], int, str]] = [
            ("GET", "/api/v1/resources?kind=Gateway", {}, 400, "unknown kind 'Gateway'"),
            ("GET", "/api/v1/resources?limit=3", {}, 400, "unknown query parameter 'limit'"),
            (
                "GET",
                "/api/v1/resources/VirtualService/default/nope",
                {},
                404,
                "VirtualService default/nope not found",
            ),
            ("DELETE", USERS_PATH + "?resourceVersion=abc", {}, 400, "resourceVersion must be a positive"),
            ("DELETE", USERS_PATH + "?dryRun=maybe", {}, 400, "dryRun must be true or false"),
            (
                "DELETE",
                USERS_PATH + "?resourceVersion=7",
                {},
                409,
                "resourceVersion 7 is stale (current is 1)",
            ),
            ("POST", USERS_PATH + "/rollback", {"json": {}}, 400, "toResourceVersion is required"),
            ("POST", USERS_PATH + "/rollback", {"json": {"toResourceVersion": 0}}, 400, "must be a positive"),
            ("POST", USERS_PATH + "/rollback", {"json": {"toResourceVersion": 9}}, 404, "has no revision 9"),
            (
                "POST",
                USERS_PATH + "/rollback",
                {"json": {"toResourceVersion": 1, "resourceVersion": "x"}},
                400,
                "resourceVersion must be a positive",
            ),
            (
                "POST",
                USERS_PATH + "/rollback",
                {"json": {"toResourceVersion": 1, "resourceVersion": 7}},
                409,
                "resourceVersion 7 is stale (current is 1)",
            ),
            ("POST", USERS_PATH + "/rollback", {"data": "x"}, 415, "is not accepted here"),
            ("GET", "/api/v1/nothing-here", {}, 404, "no such endpoint: GET /api/v1/nothing-here"),
            ("PUT", "/api/v1/apply", {}, 405, "/api/v1/apply takes POST, not PUT"),
        ]
        before = h.fingerprint()
        for method, path, kwargs, status, message in cases:
            got, data = await call(client, method, path, admin, **kwargs)
            assert got == status and message in data["error"]["message"], (method, path, data)
        assert h.fingerprint() == before and h.notifier.calls == 1

    with_client(tmp_path, body)


def test_concurrent_applies_with_a_stale_version_one_wins_the_other_gets_409(tmp_path: Path) -> None:
    async def body(h: Harness, client: TestClient[Any, Any]) -> None:
        admin = h.token()
        await call(client, "POST", "/api/v1/apply", admin, json={"documents": [virtual_service()]})
        outcomes = await asyncio.gather(
            *(
                call(
                    client,
                    "POST",
                    "/api/v1/apply",
                    admin,
                    json={"documents": [virtual_service(weights=weights, resource_version="1")]},
                )
                for weights in ((60, 40), (40, 60))
            )
        )
        statuses = sorted(status for status, _ in outcomes)
        assert statuses == [200, 409], outcomes
        loser = next(data for status, data in outcomes if status == 409)
        assert loser["error"]["code"] == "ABORTED"
        assert "resourceVersion 1 is stale (current is 2)" in loser["error"]["message"]
        assert [r.resource_version for r in h.store.history(USERS)] == [1, 2]

    with_client(tmp_path, body)


def test_authentication_and_roles(tmp_path: Path) -> None:
    async def body(h: Harness, client: TestClient[Any, Any]) -> None:
        apply_body = {"json": {"documents": [virtual_service()]}}
        stranger = ec.generate_private_key(ec.SECP256R1())
        forged = mint_token(stranger, role=Role.ADMIN, subject="mallory", now=h.clock())
        expired = h.token(Role.ADMIN, ttl=timedelta(minutes=1))
        h.clock.advance(timedelta(minutes=2))
        for token, message in [
            (None, "no bearer token"),
            (expired, "expired at"),
            (forged, "signature does not verify"),
            ("not-a-jwt", "bearer token"),
        ]:
            status, data = await call(client, "POST", "/api/v1/apply", token, **apply_body)
            assert status == 401 and data["error"]["code"] == "UNAUTHENTICATED", data
            assert message in data["error"]["message"]
        async with client.get("/api/v1/resources") as response:
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="grpc-mesh"'

        reader = h.token(Role.READ)
        status, data = await call(client, "POST", "/api/v1/apply", reader, **apply_body)
        assert (status, data["error"]["code"]) == (403, "PERMISSION_DENIED")
        assert "role 'read'" in data["error"]["message"]
        assert h.store.revision() == 0 and h.notifier.calls == 0
        assert (await call(client, "GET", "/api/v1/resources", reader))[0] == 200
        assert (await call(client, "GET", "/api/v1/sidecars", reader))[0] == 200
        assert (await call(client, "DELETE", USERS_PATH, reader))[0] == 403
        assert (await call(client, "POST", USERS_PATH + "/rollback", reader, json={"toResourceVersion": 1}))[
            0
        ] == 403

    with_client(tmp_path, body)


def test_every_api_route_needs_a_token_and_health_and_openapi_do_not(tmp_path: Path) -> None:
    async def body(h: Harness, client: TestClient[Any, Any]) -> None:
        for route in ROUTES:
            path = route.path.format(kind="VirtualService", namespace="default", name="users")
            status, data = await call(client, route.method, path, None)
            if route.operation is None:
                assert status == 200, (route, data)
            else:
                assert (status, data["error"]["code"]) == (401, "UNAUTHENTICATED"), route
        assert (await call(client, "GET", "/healthz", None))[1] == {"status": "ok"}

    with_client(tmp_path, body)


def test_a_yaml_alias_bomb_is_refused_quickly_as_too_large(tmp_path: Path) -> None:
    lines = ["  a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 7):
        lines.append(f"  a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]")
    bomb = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: users}\nspec:\n"
    bomb += "\n".join(lines) + "\n"
    assert len(bomb) < 600

    async def body(h: Harness, client: TestClient[Any, Any]) -> None:
        started = time.monotonic()
        status, data = await call(
            client,
            "POST",
            "/api/v1/apply",
            h.token(),
            data=bomb,
            headers={"Content-Type": "application/yaml"},
        )
        assert time.monotonic() - started < 1.0
        assert (status, data["error"]["message"]) == (
            400,
            "VirtualService users: larger than 256 KiB as JSON (the limit per document)",
        )
        assert h.store.revision() == 0

    with_client(tmp_path, body)


def test_whole_number_floats_in_json_are_ints_as_over_grpc(tmp_path: Path) -> None:
    async def body(h: Harness, client: TestClient[Any, Any]) -> None:
        document = json.dumps({"documents": [virtual_service()]}).replace('"weight": 90', '"weight": 90.0')
        assert '"weight": 90.0' in document
        headers = {"Content-Type": "application/json"}
        status, data = await call(client, "POST", "/api/v1/apply", h.token(), data=document, headers=headers)
        assert status == 200, data
        stored = h.store.get(USERS)
        assert stored is not None and type(stored.spec["http"][0]["route"][0]["weight"]) is int
        status, data = await call(
            client, "POST", "/api/v1/apply", h.token(), json={"documents": [virtual_service()]}
        )
        assert data["results"][0]["action"] == "unchanged"

    with_client(tmp_path, body)


def test_rollback_takes_every_field_the_openapi_document_gives_it(tmp_path: Path) -> None:
    async def body(h: Harness, client: TestClient[Any, Any]) -> None:
        admin = h.token()
        await call(client, "POST", "/api/v1/apply", admin, json={"documents": [virtual_service()]})
        await call(
            client, "POST", "/api/v1/apply", admin, json={"documents": [virtual_service(weights=(50, 50))]}
        )
        assert set(SCHEMAS["RollbackRequest"]["properties"]) == {
            "toResourceVersion",
            "resourceVersion",
            "dryRun",
        }
        status, data = await call(
            client,
            "POST",
            USERS_PATH + "/rollback",
            admin,
            json={"toResourceVersion": 1, "resourceVersion": "2", "dryRun": False},
        )
        assert (status, data["result"]["action"], data["result"]["resource"]["resourceVersion"]) == (
            200,
            "updated",
            "3",
        )

    with_client(tmp_path, body)


def test_a_store_failure_is_a_500_that_does_not_show_the_store_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(h: Harness, client: TestClient[Any, Any]) -> None:
        h.store.close()
        status, data = await call(client, "GET", "/api/v1/resources", h.token())
        assert (status, data["error"]) == (
            500,
            {"code": "INTERNAL", "message": "the store failed (see the control plane's log)"},
        )

    with caplog.at_level(logging.ERROR):
        with_client(tmp_path, body)
    assert f"{tmp_path / STORE_FILE} is closed" in caplog.text


def test_an_unexpected_exception_is_a_generic_500_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(h: Harness, client: TestClient[Any, Any]) -> None:
        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"{tmp_path}: something unexpected")

        h.service.get = broken  # type: ignore[method-assign]
        status, data = await call(client, "GET", USERS_PATH, h.token())
        assert (status, data["error"]) == (
            500,
            {"code": "INTERNAL", "message": "internal error (see the control plane's log)"},
        )

    with caplog.at_level(logging.ERROR):
        with_client(tmp_path, body)
    assert "something unexpected" in caplog.text
