"""meshctl.api_client against a fake REST server: typed errors, protobuf JSON parsing (int64 as
strings, defaults left out), URLs; and the small pieces the commands build on."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from meshctl.api_client import (
    ApiError,
    Conflict,
    ControlPlaneClient,
    NotFound,
    PermissionDenied,
    ProtocolError,
    ServerError,
    Unauthenticated,
    normalize_server_url,
)
from meshctl.documents import changed_paths, resolve_kind
from meshctl.tables import format_age, format_table
from tests.support.fake_control_plane import FakeControlPlane, resource_json


@pytest.fixture
def cp() -> Iterator[FakeControlPlane]:
    with FakeControlPlane() as fake:
        yield fake


@pytest.mark.parametrize(
    ("status", "code", "error_type"),
    [
        (400, "INVALID_ARGUMENT", ServerError),
        (401, "UNAUTHENTICATED", Unauthenticated),
        (403, "PERMISSION_DENIED", PermissionDenied),
        (404, "NOT_FOUND", NotFound),
        (409, "ABORTED", Conflict),
        (413, "INVALID_ARGUMENT", ServerError),
        (415, "INVALID_ARGUMENT", ServerError),
    ],
)
def test_errors_are_typed_and_carry_the_servers_fields(
    cp: FakeControlPlane, status: int, code: str, error_type: type[ServerError]
) -> None:
    cp.error("POST", "/api/v1/apply", status, code, "it went wrong", field="spec.hosts", reason="empty")
    with pytest.raises(error_type) as info:
        ControlPlaneClient(cp.url).apply([{"kind": "VirtualService"}])
    error = info.value
    assert (error.status, error.code, str(error)) == (status, code, "it went wrong")
    assert (error.document, error.field, error.reason) == (None, "spec.hosts", "empty")
    assert error.details() == ["field: spec.hosts", "reason: empty"]
    assert repr(error) == f"ServerError(status={status}, code={code!r}, message='it went wrong')"


def test_resources_parse_from_protobuf_json(cp: FakeControlPlane) -> None:
    full = resource_json("users", {"hosts": ["users"]}, version=12)
    bare = {"kind": "DestinationRule", "name": "x"}  # every default left out
    cp.reply("GET", "/api/v1/resources", {"resources": [full, bare]})
    first, second = ControlPlaneClient(cp.url, "tok").list_resources()
    assert (first.resource_version, first.spec, first.update_time) == (
        12,
        {"hosts": ["users"]},
        full["updateTime"],
    )
    assert (second.namespace, second.spec, second.resource_version, second.update_time) == ("", {}, 0, "")
    assert cp.requests[0].query == {}


def test_a_reply_of_the_wrong_shape_is_a_protocol_error(cp: FakeControlPlane) -> None:
    cp.reply("GET", "/api/v1/resources", {"resources": {"not": "a list"}})
    with pytest.raises(ProtocolError, match="resources: expected a JSON array, got dict"):
        ControlPlaneClient(cp.url).list_resources()
    cp.reply("GET", "/api/v1/resources", ["not", "an", "object"])
    with pytest.raises(ProtocolError, match="expected a JSON object, got list"):
        ControlPlaneClient(cp.url).list_resources()


def test_the_token_is_not_shown_in_repr() -> None:
    client = ControlPlaneClient("localhost:15011", "secret")
    assert repr(client) == "ControlPlaneClient(server='http://localhost:15011', token=set)"


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("127.0.0.1:15011", "http://127.0.0.1:15011"),
        ("http://cp.mesh:8080/", "http://cp.mesh:8080"),
        ("https://cp.mesh/prefix", "https://cp.mesh/prefix"),
    ],
)
def test_server_urls(text: str, url: str) -> None:
    assert normalize_server_url(text) == url


@pytest.mark.parametrize("text", ["ftp://x", "http://", "http://host:port", "http://host:99999"])
def test_bad_server_urls(text: str) -> None:
    with pytest.raises(ValueError, match=r"not an http|invalid port"):
        normalize_server_url(text)


def test_kind_names() -> None:
    assert {resolve_kind(a) for a in ("AP", "authorizationpolicies", " AuthorizationPolicy ")} == {
        "AuthorizationPolicy"
    }


def test_changed_paths() -> None:
    old = {"a": 1, "b": {"c": [1, 2], "d": "x"}, "e": [{"f": 1}]}
    new = {"a": 1, "b": {"c": [1, 3], "d": "x"}, "e": [{"f": 1}, {"f": 2}], "g": True}
    assert changed_paths(old, new) == ["b.c[1]", "e", "g"]
    assert changed_paths(old, old) == []
    assert changed_paths(1, 2) == ["(whole spec)"]


def test_ages_and_tables() -> None:
    now = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
    ages = ["2030-06-01T11:59:59Z", "2030-06-01T11:00:00Z", "2030-05-31T10:00:00Z", "2030-05-28T12:00:00Z"]
    assert [format_age(t, now) for t in ages] == ["1s", "60m", "26h", "4d"]
    assert [format_age(t, now) for t in ("", "garbage", "2030-06-01T12:00:05Z")] == ["-", "-", "0s"]
    assert format_table(("A", "LONGER"), [("xx", "y"), ("", "")]) == "A    LONGER\nxx   y\n"


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"", "control plane not reachable at http://127.0.0.1:{port}: remote end closed connection"),
        (b"SMTP ready\r\n", "GET /api/v1/sidecars: not a valid HTTP response from http://127.0.0.1:{port}"),
    ],
)
def test_a_peer_that_does_not_speak_http(answer: bytes, error: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve_one() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(answer)

        thread = threading.Thread(target=serve_one)
        thread.start()
        try:
            with pytest.raises(ApiError) as info:
                ControlPlaneClient(f"127.0.0.1:{port}", timeout=10).sidecars()
        finally:
            thread.join()
    assert str(info.value).startswith(error.format(port=port))
