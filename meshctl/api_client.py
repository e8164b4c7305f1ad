"""A small synchronous client for the control plane's REST API (JSON in the protobuf JSON mapping).

Every failure is an `ApiError`: `ControlPlaneUnreachable` when nothing answers at the URL,
`ServerError` when the server refused the request (carrying its error code and message), and
`ProtocolError` when the answer is not the shape the API promises.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_SERVER = "http://127.0.0.1:15011"
SERVER_ENV = "MESHCTL_SERVER"
TOKEN_ENV = "MESHCTL_TOKEN"
DEFAULT_REQUEST_TIMEOUT = 30.0
USER_AGENT = "meshctl/0.1"

JsonObject = dict[str, Any]


class ApiError(Exception):
    """The request did not succeed; str() is a message fit for an operator."""


class ControlPlaneUnreachable(ApiError):
    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"control plane not reachable at {url}: {detail}")
        self.url = url
        self.detail = detail


class ProtocolError(ApiError):
    """The server answered, but not with what the API defines."""


class ServerError(ApiError):
    """The server refused the request with an HTTP error and (usually) an `{"error": {...}}` body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        document: str | None = None,
        field: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.document = document
        self.field = field
        self.reason = reason

    def __repr__(self) -> str:
        return f"ServerError(status={self.status}, code={self.code!r}, message={self.message!r})"

    def details(self) -> list[str]:
        """The structured parts of the error the message does not already say."""
        lines = []
        for label, value in (("document", self.document), ("field", self.field), ("reason", self.reason)):
            if value and value not in self.message:
                lines.append(f"{label}: {value}")
        return lines


class NotFound(ServerError):
    pass


class Conflict(ServerError):
    pass


class Unauthenticated(ServerError):
    pass


class PermissionDenied(ServerError):
    pass


_ERRORS_BY_STATUS: dict[int, type[ServerError]] = {
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
}


# --- Response shapes -------------------------------------------------------------------------


def _int64(value: Any, what: str) -> int:
    """An int64 from the protobuf JSON mapping: a decimal string, or a plain number."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ProtocolError(f"{what}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ProtocolError(f"{what}: expected an integer, got {value!r}")


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise ProtocolError(f"{key}: expected a string, got {value!r}")
    return value


def _obj(value: Any, what: str) -> JsonObject:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ProtocolError(f"{what}: expected a JSON array, got {type(value).__name__}")
    return value


@dataclass(frozen=True, slots=True)
class Resource:
    kind: str
    namespace: str
    name: str
    spec: JsonObject
    resource_version: int
    update_time: str  # RFC 3339, as the server sent it ("" when absent)

    @classmethod
    def from_json(cls, data: Any) -> Resource:
        data = _obj(data, "resource")
        spec = data.get("spec")
        return cls(
            kind=_str(data, "kind"),
            namespace=_str(data, "namespace"),
            name=_str(data, "name"),
            spec=_obj(spec, "resource.spec") if spec is not None else {},
            resource_version=_int64(data.get("resourceVersion"), "resource.resourceVersion"),
            update_time=_str(data, "updateTime"),
        )

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ApplyResult:
    resource: Resource
    action: str  # created, updated, unchanged or deleted
    diff: str

    @classmethod
    def from_json(cls, data: Any) -> ApplyResult:
        data = _obj(data, "result")
        return cls(Resource.from_json(data.get("resource", {})), _str(data, "action"), _str(data, "diff"))


@dataclass(frozen=True, slots=True)
class Revision:
    resource_version: int
    time: str
    spec: JsonObject | None  # None for a deletion
    deleted: bool

    @classmethod
    def from_json(cls, data: Any) -> Revision:
        data = _obj(data, "revision")
        spec = data.get("spec")
        deleted = bool(data.get("deleted", False))
        return cls(
            resource_version=_int64(data.get("resourceVersion"), "revision.resourceVersion"),
            time=_str(data, "time"),
            spec=None if deleted or spec is None else _obj(spec, "revision.spec"),
            deleted=deleted,
        )


@dataclass(frozen=True, slots=True)
class SidecarStatus:
    node_id: str
    service: str
    namespace: str
    labels: dict[str, str]
    inbound_address: str
    identity: str
    applied_version: str
    sent_version: str
    state: str  # ACK, NACK or PENDING
    nack_reason: str
    last_seen: str
    connected: bool
    serving: bool
    admin_address: str
    applied_revision: int
    sent_revision: int  # the store revision the last sent snapshot was built for
    identity_verified: bool = False  # proven with a certificate from the mesh CA
    certificate_serial: str = ""
    certificate_not_after: str = ""

    @classmethod
    def from_json(cls, data: Any) -> SidecarStatus:
        data = _obj(data, "sidecar")
        labels = _obj(data.get("labels", {}), "sidecar.labels")
        return cls(
            node_id=_str(data, "nodeId"),
            service=_str(data, "service"),
            namespace=_str(data, "namespace"),
            labels={str(k): str(v) for k, v in labels.items()},
            inbound_address=_str(data, "inboundAddress"),
            identity=_str(data, "identity"),
            applied_version=_str(data, "appliedVersion"),
            sent_version=_str(data, "sentVersion"),
            state=_str(data, "state") or "PENDING",
            nack_reason=_str(data, "nackReason"),
            last_seen=_str(data, "lastSeen"),
            connected=bool(data.get("connected", False)),
            serving=bool(data.get("serving", False)),
            admin_address=_str(data, "adminAddress"),
            applied_revision=_int64(data.get("appliedRevision"), "sidecar.appliedRevision"),
            sent_revision=_int64(data.get("sentRevision"), "sidecar.sentRevision"),
            identity_verified=bool(data.get("identityVerified", False)),
            certificate_serial=_str(data, "certificateSerial"),
            certificate_not_after=_str(data, "certificateNotAfter"),
        )

    def to_json(self) -> JsonObject:
        return {
            "nodeId": self.node_id,
            "service": self.service,
            "namespace": self.namespace,
            "labels": dict(self.labels),
            "inboundAddress": self.inbound_address,
            "identity": self.identity,
            "appliedVersion": self.applied_version,
            "sentVersion": self.sent_version,
            "state": self.state,
            "nackReason": self.nack_reason,
            "lastSeen": self.last_seen,
            "connected": self.connected,
            "serving": self.serving,
            "adminAddress": self.admin_address,
            "appliedRevision": self.applied_revision,
            "sentRevision": self.sent_revision,
            "identityVerified": self.identity_verified,
            "certificateSerial": self.certificate_serial,
            "certificateNotAfter": self.certificate_not_after,
        }

    def __str__(self) -> str:
        return f"{self.service or '?'}.{self.namespace or '?'} ({self.node_id or 'no node id'})"


@dataclass(frozen=True, slots=True)
class SidecarList:
    sidecars: list[SidecarStatus] = field(default_factory=list)
    store_revision: int = 0


# --- The client ------------------------------------------------------------------------------


def normalize_server_url(text: str) -> str:
    """`host:port` → `http://host:port`; rejects anything but an http(s) URL with a host."""
    url = text.strip()
    if "://" not in url:
        url = "http://" + url
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"{text!r} is not an http:// or https:// URL")
    try:
        parsed.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port") from None
    return url.rstrip("/")


def _segment(text: str) -> str:
    return urllib.parse.quote(text, safe="")


class ControlPlaneClient:
    """One method per REST operation; each returns parsed values or raises an ApiError."""

    def __init__(
        self, server: str, token: str | None = None, *, timeout: float = DEFAULT_REQUEST_TIMEOUT
    ) -> None:
        self.server = normalize_server_url(server)
        self.token = token or None
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"ControlPlaneClient(server={self.server!r}, token={'set' if self.token else 'none'})"

    # Operations

    def apply(self, documents: Sequence[Mapping[str, Any]], *, dry_run: bool = False) -> list[ApplyResult]:
        body = {"documents": list(documents), "dryRun": dry_run}
        data = self._call("POST", "/api/v1/apply", body=body)
        return [ApplyResult.from_json(r) for r in _list(data.get("results"), "results")]

    def list_resources(self, kind: str = "", namespace: str = "") -> list[Resource]:
        query = {k: v for k, v in (("kind", kind), ("namespace", namespace)) if v}
        data = self._call("GET", "/api/v1/resources", query=query)
        return [Resource.from_json(r) for r in _list(data.get("resources"), "resources")]

    def get_resource(self, kind: str, namespace: str, name: str) -> Resource:
        data = self._call("GET", self._resource_path(kind, namespace, name))
        return Resource.from_json(data.get("resource"))

    def delete_resource(
        self, kind: str, namespace: str, name: str, *, resource_version: int = 0, dry_run: bool = False
    ) -> ApplyResult:
        query: dict[str, str] = {}
        if resource_version:
            query["resourceVersion"] = str(resource_version)
        if dry_run:
            query["dryRun"] = "true"
        data = self._call("DELETE", self._resource_path(kind, namespace, name), query=query)
        return ApplyResult.from_json(data.get("result"))

    def revisions(self, kind: str, namespace: str, name: str) -> list[Revision]:
        data = self._call("GET", self._resource_path(kind, namespace, name) + "/revisions")
        return [Revision.from_json(r) for r in _list(data.get("revisions"), "revisions")]

    def rollback(
        self,
        kind: str,
        namespace: str,
        name: str,
        to_resource_version: int,
        *,
        resource_version: int = 0,
        dry_run: bool = False,
    ) -> ApplyResult:
        body: dict[str, Any] = {"toResourceVersion": to_resource_version, "dryRun": dry_run}
        if resource_version:
            body["resourceVersion"] = resource_version
        data = self._call("POST", self._resource_path(kind, namespace, name) + "/rollback", body=body)
        return ApplyResult.from_json(data.get("result"))

    def sidecars(self) -> SidecarList:
        data = self._call("GET", "/api/v1/sidecars")
        return SidecarList(
            [SidecarStatus.from_json(s) for s in _list(data.get("sidecars"), "sidecars")],
            _int64(data.get("storeRevision"), "storeRevision"),
        )

    # Transport

    @staticmethod
    def _resource_path(kind: str, namespace: str, name: str) -> str:
        return f"/api/v1/resources/{_segment(kind)}/{_segment(namespace)}/{_segment(name)}"

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> JsonObject:
        url = self.server + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        data = None
        if body is not None:
            data = json.dumps(body, allow_nan=False).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                raise self._server_error(exc.code, exc.reason, exc.read()) from None
        except urllib.error.URLError as exc:
            raise ControlPlaneUnreachable(self.server, _describe_os_error(exc.reason)) from None
        except TimeoutError:
            raise ControlPlaneUnreachable(self.server, f"no answer within {self.timeout:g}s") from None
        except OSError as exc:  # reset or closed mid-request
            raise ControlPlaneUnreachable(self.server, _describe_os_error(exc)) from None
        except http.client.HTTPException as exc:  # not HTTP, or cut short
            raise ProtocolError(
                f"{method} {path}: not a valid HTTP response from {self.server} ({type(exc).__name__})"
            ) from None
        try:
            parsed = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise ProtocolError(
                f"{method} {path}: HTTP {status} with a body that is not JSON: {_snippet(raw)}"
            ) from None
        if not isinstance(parsed, dict):
            raise ProtocolError(f"{method} {path}: expected a JSON object, got {type(parsed).__name__}")
        return parsed

    @staticmethod
    def _server_error(status: int, http_reason: str, raw: bytes) -> ServerError:
        error_cls = _ERRORS_BY_STATUS.get(status, ServerError)
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        error = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(error, dict) or not isinstance(error.get("message"), str):
            text = _snippet(raw)
            message = f"HTTP {status} {http_reason}" + (f": {text}" if text else "")
            return error_cls(status, "UNKNOWN", message)

        def optional(key: str) -> str | None:
            value = error.get(key)
            return None if value in (None, "") else str(value)

        return error_cls(
            status,
            str(error.get("code") or "UNKNOWN"),
            error["message"],
            document=optional("document"),
            field=optional("field"),
            reason=optional("reason"),
        )


def _describe_os_error(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve host ({reason.strerror or reason})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    text = str(reason) or type(reason).__name__
    return text[:1].lower() + text[1:]


def _snippet(raw: bytes, limit: int = 200) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


# --- Command-line wiring shared by the commands that talk to the control plane --------------


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """--server, --token and --token-file, with their environment defaults."""
    group = parser.add_argument_group("control plane connection")
    group.add_argument(
        "--server",
        metavar="URL",
        default=None,
        help=f"control plane REST address (default: ${SERVER_ENV} or {DEFAULT_SERVER})",
    )
    tokens = group.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token", metavar="TOKEN", default=None, help=f"bearer token (default: ${TOKEN_ENV})"
    )
    tokens.add_argument("--token-file", metavar="FILE", default=None, help="read the bearer token from FILE")


class ConnectionArgumentsError(ValueError):
    """--server or --token-file is unusable: a usage error (exit 2)."""


def client_from_args(args: argparse.Namespace) -> ControlPlaneClient:
    """Build a client from the connection arguments; raises ConnectionArgumentsError."""
    server = args.server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER
    token: str | None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise ConnectionArgumentsError(
                f"cannot read token file {args.token_file}: {exc.strerror or exc}"
            ) from None
        if not token:
            raise ConnectionArgumentsError(f"token file {args.token_file} is empty")
    else:
        token = args.token or os.environ.get(TOKEN_ENV) or None
    try:
        return ControlPlaneClient(server, token)
    except ValueError as exc:
        raise ConnectionArgumentsError(f"--server: {exc}") from None
