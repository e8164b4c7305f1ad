"""Access logs and the admin endpoints of real processes: both sidecars of a call log it as one
JSON line (the inbound one naming the caller's SPIFFE ID, both carrying the caller's trace id),
and /clusters and /certs describe the upstream pools and the workload certificate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from demo.v1 import users_pb2, users_pb2_grpc

from tests.support.clients import channel
from tests.support.mesh import (
    CLIENT,
    NAMESPACE,
    TRUST_DOMAIN,
    AppSpec,
    Mesh,
    access_log_path,
    http_get,
    running_mesh,
    wait_for,
)

pytestmark = pytest.mark.integration

TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE}-b7ad6b7169203331-01"
METHOD = "/demo.v1.Users/GetUser"


@pytest.fixture(scope="module")
def logged_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with running_mesh(
        tmp_path_factory.mktemp("access-log"), [AppSpec("users", "users")], access_log=True
    ) as mesh:
        yield mesh


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _spiffe(name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{name}"


def _get_json(address: str, path: str) -> Any:
    status, body = http_get(address, path)
    assert status == 200, body
    return json.loads(body)


def test_both_sidecars_log_each_call_as_one_json_line(logged_mesh: Mesh) -> None:
    mesh = logged_mesh
    with channel(mesh.outbound, "users") as ch:
        stub = users_pb2_grpc.UsersStub(ch)
        created = stub.CreateUser(users_pb2.CreateUserRequest(name="Ada"), timeout=10)
        stub.GetUser(
            users_pb2.GetUserRequest(id=created.user.id), timeout=10, metadata=[("traceparent", TRACEPARENT)]
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.GetUser(users_pb2.GetUserRequest(id="no-such-user"), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND

    client_log = access_log_path(mesh.root, CLIENT)
    server_log = access_log_path(mesh.root, "users")
    wait_for(lambda: len(_lines(client_log)) == 3, 10, "3 lines in the client sidecar's access log")
    wait_for(lambda: len(_lines(server_log)) == 3, 10, "3 lines in the users sidecar's access log")
    for path, direction, source, upstream in [
        (client_log, "outbound", CLIENT, mesh.workloads["users"].inbound),
        (server_log, "inbound", _spiffe(CLIENT), mesh.workloads["users"].app_address),
    ]:
        lines = _lines(path)
        assert [line["method"] for line in lines] == ["/demo.v1.Users/CreateUser", METHOD, METHOD], path
        assert [line["grpc_status"] for line in lines] == [0, 0, grpc.StatusCode.NOT_FOUND.value[0]]
        assert [line["trace_id"] for line in lines] == ["", TRACE, ""]
        for line in lines:
            assert line["direction"] == direction
            assert line["source"] == source
            assert line["destination"] == "users"
            assert line["duration_ms"] > 0
            assert line["request_bytes"] > 0
            assert line["upstream"] == upstream
            assert line["flags"] == []
            assert line["time"].endswith("Z")
        assert lines[0]["response_bytes"] > 0 and lines[1]["response_bytes"] > 0


def test_clusters_lists_the_upstream_pools(logged_mesh: Mesh) -> None:
    mesh = logged_mesh
    users = mesh.workloads["users"]
    with channel(mesh.outbound, "users") as ch:
        users_pb2_grpc.UsersStub(ch).CreateUser(users_pb2.CreateUserRequest(name="Bo"), timeout=10)
    [cluster] = _get_json(mesh.admin, "/clusters")["clusters"]
    assert cluster["address"] == users.inbound
    assert cluster["services"] == ["users"]
    assert cluster["labels"] == {"version": "v1"}
    assert cluster["secure"] is True
    assert cluster["connections"] >= 1
    assert cluster["in_flight"] == 0
    [local] = _get_json(users.admin, "/clusters")["clusters"]
    assert local["address"] == users.app_address
    assert local["services"] == ["users"]
    assert local["secure"] is False
    assert local["connections"] >= 1


def test_certs_shows_the_workload_certificate_and_trust_bundle(logged_mesh: Mesh) -> None:
    users = logged_mesh.workloads["users"]
    certs = _get_json(users.admin, "/certs")
    cert = x509.load_pem_x509_certificate(users.tls.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(users.tls.ca.read_bytes())
    mine = certs["certificate"]
    assert mine["spiffe_id"] == _spiffe("users")
    assert mine["serial"] == format(cert.serial_number, "x")
    assert mine["not_after"] == cert.not_valid_after_utc.isoformat().replace("+00:00", "Z")
    assert mine["not_before"] == cert.not_valid_before_utc.isoformat().replace("+00:00", "Z")
    assert 0 < mine["seconds_left"] <= (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
    [bundle] = certs["trust_bundle"]["certificates"]
    assert bundle["subject"] == ca.subject.rfc4514_string()
    assert bundle["not_after"] == ca.not_valid_after_utc.isoformat().replace("+00:00", "Z")
    assert "error" not in certs
