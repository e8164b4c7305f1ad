"""The OpenAPI document and the REST app agree: every route documented, every documented
operation routed, roles and auth as enforced, and every $ref resolving."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from control_plane.auth import READ_OPERATIONS
from control_plane.openapi import DOCUMENT
from control_plane.rest import ROUTES, create_app
from tests.support.policy_api import harness

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def documented() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def test_every_route_of_the_app_is_documented_and_every_documented_operation_is_routed(
    tmp_path: Path,
) -> None:
    with harness(tmp_path) as h:
        app = create_app(h.service, h.verifier)
        routed = {
            (route.method, route.resource.canonical)
            for route in app.router.routes()
            if route.resource is not None
        }
    assert routed == set(documented())
    assert routed == {(route.method, route.path) for route in ROUTES}


def test_roles_and_security_match_what_the_app_enforces() -> None:
    operations = documented()
    for route in ROUTES:
        operation = operations[(route.method, route.path)]
        if route.operation is None:
            assert operation["security"] == [] and "x-mesh-role" not in operation, route
            continue
        assert "security" not in operation  # the document's default: bearer auth
        assert operation["x-mesh-role"] == ("read" if route.operation in READ_OPERATIONS else "admin"), route
        for status in ("401", "403"):
            assert status in operation["responses"], (route, status)
    assert DOCUMENT["security"] == [{"bearerAuth": []}]
    assert DOCUMENT["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": DOCUMENT["components"]["securitySchemes"]["bearerAuth"]["description"],
    }


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref":
                yield item
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def test_the_document_is_well_formed() -> None:
    assert DOCUMENT["openapi"].startswith("3.1.")
    assert json.loads(json.dumps(DOCUMENT)) == DOCUMENT
    for ref in _refs(DOCUMENT):
        assert ref.startswith("#/"), ref
        target: Any = DOCUMENT
        for part in ref[2:].split("/"):
            target = target[part]
    ids = [operation["operationId"] for operation in documented().values()]
    assert len(ids) == len(set(ids))
    parameters = DOCUMENT["components"]["parameters"]
    for path, item in DOCUMENT["paths"].items():
        declared = {parameters[p["$ref"].rsplit("/", 1)[1]]["name"] for p in item.get("parameters", [])}
        assert declared == set(re.findall(r"{(\w+)}", path)), path
        for method, operation in item.items():
            if method in HTTP_METHODS:
                assert "200" in operation["responses"], (path, method)
    error = DOCUMENT["components"]["schemas"]["Error"]["properties"]["error"]
    assert set(error["properties"]) == {"code", "message", "document", "field", "reason"}


def test_the_app_serves_the_document_without_a_token(tmp_path: Path) -> None:
    async def main() -> None:
        with harness(tmp_path) as h:
            async with (
                TestClient(TestServer(create_app(h.service, h.verifier))) as client,
                client.get("/openapi.json") as response,
            ):
                assert response.status == 200
                assert await response.json() == DOCUMENT

    asyncio.run(main())
