"""The policy API over HTTP/JSON (aiohttp): a thin adapter over PolicyService.

Bodies are the mesh.v1 messages in the protobuf JSON mapping (`api_messages.to_json`), so the
REST and gRPC APIs answer with the same shapes; errors are ``{"error": {...}}``
(`control_plane.rest_errors`). Every ``/api/v1/`` route needs a bearer token whose role covers
its operation; ``/healthz`` and ``/openapi.json`` (the document in `control_plane.openapi`) do not.

``POST /api/v1/apply`` takes ``{"documents": [...], "dryRun": bool}`` as ``application/json``, or
a multi-document YAML stream as ``application/yaml`` (with ``?dryRun=true`` for a dry run). Bodies
are parsed in a worker thread (a 4 MiB body takes a moment), as the service validates.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from control_plane import api_messages
from control_plane.api_errors import (
    ApiError,
    Internal,
    InvalidArgument,
    MethodNotAllowed,
    NotFoundError,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from control_plane.api_messages import whole_number
from control_plane.auth import Operation, TokenVerifier, authorize
from control_plane.openapi import DOCUMENT
from control_plane.policy_service import PolicyService
from control_plane.resources import ResourceKey
from control_plane.rest_errors import error_response

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 << 20
JSON_TYPES = frozenset({"application/json"})
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
RESOURCE = "/api/v1/resources/{kind}/{namespace}/{name}"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: str  # the RestApi method's name
    operation: Operation | None  # None: no token needed


ROUTES: tuple[Route, ...] = (
    Route("POST", "/api/v1/apply", "apply", Operation.APPLY),
    Route("GET", "/api/v1/resources", "list", Operation.LIST),
    Route("GET", RESOURCE, "get", Operation.GET),
    Route("DELETE", RESOURCE, "delete", Operation.DELETE),
    Route("GET", RESOURCE + "/revisions", "history", Operation.HISTORY),
    Route("POST", RESOURCE + "/rollback", "rollback", Operation.ROLLBACK),
    Route("GET", "/api/v1/sidecars", "sidecars", Operation.SIDECARS),
    Route("GET", "/openapi.json", "openapi", None),
    Route("GET", "/healthz", "healthz", None),
)


def create_app(
    service: PolicyService, verifier: TokenVerifier, *, max_body_bytes: int = MAX_BODY_BYTES
) -> web.Application:
    api = RestApi(service, verifier, max_body_bytes)
    app = web.Application(middlewares=[api.errors, api.authenticate], client_max_size=max_body_bytes)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, getattr(api, route.handler))
    return app


def _json(message: Any, status: int = 200) -> web.Response:
    return web.json_response(api_messages.to_json(message), status=status)


def _key(request: web.Request) -> ResourceKey:
    info = request.match_info
    return ResourceKey(info["kind"], info["namespace"], info["name"])


def _query(request: web.Request, allowed: frozenset[str]) -> Mapping[str, str]:
    for name in request.query:
        if name not in allowed:
            expected = ", ".join(sorted(allowed)) or "none"
            raise InvalidArgument(
                f"unknown query parameter {name!r} (expected: {expected})",
                field=name,
                reason="unknown parameter",
            )
    return request.query


def _bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    raise InvalidArgument(
        f"{field} must be true or false, got {value!r}", field=field, reason="not a boolean"
    )


def _query_bool(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name, "false").lower()
    if value not in {"true", "false", "1", "0"}:
        raise InvalidArgument(
            f"{name} must be true or false, got {query[name]!r}", field=name, reason="not a boolean"
        )
    return value in {"true", "1"}


def _version(value: Any, field: str) -> int:
    """An int64 as the protobuf JSON mapping writes it: a number or a decimal string."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and value.strip().isdigit()
    ):
        number = int(value)
    if number is None or number <= 0:
        raise InvalidArgument(
            f"{field} must be a positive resource version, got {value!r}", field=field, reason="not a version"
        )
    return number


def _fields(body: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for name in body:
        if name not in allowed:
            raise InvalidArgument(
                f"unknown field {name!r} in the request body (expected: {', '.join(allowed)})",
                field=name,
                reason="unknown field",
            )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _number(text: str) -> int | float:
    """A JSON number with a fraction or exponent: JSON has one number type (and these documents
    are protobuf Structs, all doubles), so ``50.0`` is 50, as the gRPC API takes it."""
    return whole_number(float(text))


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"malformed JSON: the body is not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_number)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", reason="malformed JSON"
        ) from None
    except ValueError as exc:
        raise InvalidArgument(f"malformed JSON: {exc}", reason="malformed JSON") from None
    except RecursionError:
        raise InvalidArgument("malformed JSON: nested too deeply", reason="malformed JSON") from None
    if not isinstance(value, dict):
        raise InvalidArgument(
            f"the request body must be a JSON object, got {type(value).__name__}", reason="not an object"
        )
    return value


class RestApi:
    def __init__(self, service: PolicyService, verifier: TokenVerifier, max_body_bytes: int) -> None:
        self._service = service
        self._verifier = verifier
        self._max_body = max_body_bytes
        self._operations = {(route.method, route.path): route.operation for route in ROUTES}

    # -- middleware -----------------------------------------------------------------------------

    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as error:
            return error_response(error)
        except web.HTTPNotFound:
            return error_response(NotFoundError(f"no such endpoint: {request.method} {request.path}"))
        except web.HTTPMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.allowed_methods))
            return error_response(MethodNotAllowed(f"{request.path} takes {allowed}, not {request.method}"))
        except web.HTTPRequestEntityTooLarge:
            return error_response(self._too_large())
        except web.HTTPException:
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return error_response(Internal())

    @web.middleware
    async def authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route
        resource = route.resource
        operation = None if resource is None else self._operations.get((route.method, resource.canonical))
        if operation is not None:
            principal = self._verifier.authenticate(request.headers.get("Authorization"))
            authorize(principal, operation)
        return await handler(request)

    # -- bodies ---------------------------------------------------------------------------------

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body too large: the limit is {self._max_body} bytes")

    async def _body(self, request: web.Request, accepted: frozenset[str]) -> bytes:
        if request.content_type not in accepted:
            raise UnsupportedMediaType(
                f"content type {request.content_type!r} is not accepted here "
                f"(send {' or '.join(sorted(accepted))})",
                reason="unsupported media type",
            )
        if request.content_length is not None and request.content_length > self._max_body:
            raise self._too_large()
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise self._too_large() from None

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        return await asyncio.to_thread(_parse_json, await self._body(request, JSON_TYPES))

    # -- handlers -------------------------------------------------------------------------------

    async def apply(self, request: web.Request) -> web.Response:
        query = _query(request, frozenset({"dryRun"}))
        dry_run = _query_bool(query, "dryRun")
        body = await self._body(request, JSON_TYPES | YAML_TYPES)
        if request.content_type in YAML_TYPES:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidArgument(f"the YAML body is not UTF-8 (byte {exc.start})") from None
            results = await self._service.apply_yaml(text, dry_run=dry_run)
        else:
            parsed = await asyncio.to_thread(_parse_json, body)
            _fields(parsed, ("documents", "dryRun"))
            documents = parsed.get("documents")
            if not isinstance(documents, list):
                raise InvalidArgument(
                    "documents must be a list of resource documents", field="documents", reason="not a list"
                )
            dry_run = dry_run or _bool(parsed.get("dryRun", False), "dryRun")
            results = await self._service.apply(documents, dry_run=dry_run)
        return _json(api_messages.apply_response(results))

    async def list(self, request: web.Request) -> web.Response:
        query = _query(request, frozenset({"kind", "namespace"}))
        resources = await self._service.list_resources(query.get("kind"), query.get("namespace"))
        return _json(api_messages.list_response(resources))

    async def get(self, request: web.Request) -> web.Response:
        _query(request, frozenset())
        return _json(api_messages.get_response(await self._service.get(_key(request))))

    async def delete(self, request: web.Request) -> web.Response:
        query = _query(request, frozenset({"resourceVersion", "dryRun"}))
        version = query.get("resourceVersion")
        result = await self._service.delete(
            _key(request),
            resource_version=None if version is None else _version(version, "resourceVersion"),
            dry_run=_query_bool(query, "dryRun"),
        )
        return _json(api_messages.delete_response(result))

    async def history(self, request: web.Request) -> web.Response:
        _query(request, frozenset())
        return _json(api_messages.revisions_response(await self._service.history(_key(request))))

    async def rollback(self, request: web.Request) -> web.Response:
        _query(request, frozenset())
        body = await self._json_body(request)
        _fields(body, ("toResourceVersion", "resourceVersion", "dryRun"))
        if "toResourceVersion" not in body:
            raise InvalidArgument(
                "toResourceVersion is required (a resourceVersion from the revisions list)",
                field="toResourceVersion",
                reason="required",
            )
        version = body.get("resourceVersion")
        result = await self._service.rollback(
            _key(request),
            _version(body["toResourceVersion"], "toResourceVersion"),
            resource_version=None if version is None else _version(version, "resourceVersion"),
            dry_run=_bool(body.get("dryRun", False), "dryRun"),
        )
        return _json(api_messages.rollback_response(result))

    async def sidecars(self, request: web.Request) -> web.Response:
        _query(request, frozenset())
        return _json(api_messages.sidecars_response(await self._service.sidecars()))

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(DOCUMENT)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})
