"""The sidecar's gRPC admin service, through the real grpcurl: reflection lists it, and each
method answers with what the admin HTTP endpoint of the same name shows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from demo.v1 import users_pb2, users_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.support.clients import channel, grpcurl
from tests.support.mesh import CLIENT, AppSpec, Mesh, http_get, running_mesh

pytestmark = pytest.mark.integration

SERVICE = "mesh.v1.SidecarAdmin"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with running_mesh(tmp_path_factory.mktemp("admin-grpc"), [AppSpec("users", "users")]) as mesh:
        with channel(mesh.outbound, "users") as ch:
            users_pb2_grpc.UsersStub(ch).CreateUser(users_pb2.CreateUserRequest(name="Ada"), timeout=10)
        yield mesh


def _admin_grpc(mesh: Mesh, name: str) -> str:
    """The bound gRPC admin address, from the sidecar's ready file."""
    ready = json.loads((mesh.root / f"sidecar-{name}.json").read_text())
    address: str = ready["admin_grpc"]
    assert address != ready["admin"]
    return address


def _http_json(address: str, path: str) -> Any:
    status, body = http_get(address, path)
    assert status == 200, body
    return json.loads(body)


def _call(address: str, method: str) -> Any:
    return json.loads(grpcurl(address, f"{SERVICE}/{method}"))


def test_grpcurl_lists_and_describes_the_admin_service(mesh: Mesh) -> None:
    address = _admin_grpc(mesh, "users")
    assert grpcurl(address, "list").split() == ["grpc.reflection.v1alpha.ServerReflection", SERVICE]
    methods = grpcurl(address, "list", SERVICE).split()
    assert methods == [
        f"{SERVICE}.{m}"
        for m in ("GetCerts", "GetClusters", "GetConfigDump", "GetMetrics", "GetStats", "Ready")
    ]
    described = grpcurl(address, "describe", "mesh.v1.GetConfigDumpResponse")
    assert "google.protobuf.Struct config_dump" in described


def test_grpcurl_calls_return_what_the_http_endpoints_show(mesh: Mesh) -> None:
    users = mesh.workloads["users"]
    for name, admin in [("users", users.admin), (CLIENT, mesh.admin)]:
        address = _admin_grpc(mesh, name)
        assert _call(address, "Ready") == {"ready": True}
        # proto3 JSON leaves out empty lists; the HTTP view has them
        clusters, http_clusters = _call(address, "GetClusters"), _http_json(admin, "/clusters")
        for key in ("clusters", "destinations"):
            assert clusters.get(key, []) == http_clusters[key], key
        certs, http_certs = _call(address, "GetCerts")["certs"], _http_json(admin, "/certs")
        # seconds_left counts down between the two reads
        left = certs["certificate"].pop("seconds_left")
        assert abs(left - http_certs["certificate"].pop("seconds_left")) < 5
        assert certs == http_certs
        dump = _call(address, "GetConfigDump")["config_dump"]
        http_dump = _http_json(admin, "/config_dump")
        assert dump == http_dump
        stats = _call(address, "GetStats")["stats"]
        assert stats == _http_json(admin, "/stats")
    metrics = _call(_admin_grpc(mesh, "users"), "GetMetrics")
    assert metrics["content_type"].startswith("text/plain")
    [requests] = [
        sample
        for family in text_string_to_metric_families(metrics["text"])
        for sample in family.samples
        if sample.name == "istio_requests_total"
    ]
    assert requests.labels["reporter"] == "destination"
    assert requests.labels["grpc_response_status"] == "0"
    assert requests.value == 1
