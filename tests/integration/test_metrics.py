"""Prometheus /metrics of real processes: both sidecars of a call report it with Istio's labels
(reporter=source on the client's, reporter=destination on the server's), and the control plane
reports its connected sidecars and their Acks.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from demo.v1 import users_pb2, users_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from control_plane.ca import CertificateAuthority
from meshctl import procs
from tests.support.clients import ECHO, channel
from tests.support.control_plane_mesh import (
    TRUST_DOMAIN,
    ControlPlaneProcess,
    SidecarSpec,
    check_exit_codes,
    logs_note,
    start_sidecars,
    wait_all_ready,
)
from tests.support.mesh import AppSpec, Mesh, http_get, running_mesh, wait_for

pytestmark = pytest.mark.integration

Samples = list[tuple[str, dict[str, str], float]]


def scrape(address: str) -> Samples:
    status, body = http_get(address, "/metrics")
    assert status == 200, body
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    ]


def pick(samples: Samples, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    return [
        (got, v) for n, got, v in samples if n == name and all(got.get(k) == w for k, w in labels.items())
    ]


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for _, v in pick(samples, name, **labels))


@pytest.fixture(scope="module")
def users_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with running_mesh(tmp_path_factory.mktemp("metrics"), [AppSpec("users", "users")]) as mesh:
        yield mesh


def test_both_reporters_count_the_calls_with_istios_labels(users_mesh: Mesh) -> None:
    mesh = users_mesh
    missing = users_pb2.GetUserRequest(id="no-such-user")
    with channel(mesh.outbound, "users") as ch:
        stub = users_pb2_grpc.UsersStub(ch)
        created = stub.CreateUser(users_pb2.CreateUserRequest(name="Ada"), timeout=10)
        for _ in range(3):
            stub.GetUser(users_pb2.GetUserRequest(id=created.user.id), timeout=10)
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as info:
                stub.GetUser(missing, timeout=10)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND

    server_admin = mesh.workloads["users"].admin
    # The server's sidecar records a call when the response has gone through it: the client may
    # have its answer a moment earlier.
    wait_for(
        lambda: total(scrape(server_admin), "istio_requests_total") == 6, 10, "the server sidecar's 6 calls"
    )
    common = {
        "source_workload": "client",
        "destination_service": "users",
        "destination_version": "v1",
        "request_protocol": "grpc",
        "response_code": "200",
    }
    for admin, reporter, security in (
        (mesh.admin, "source", "none"),
        (server_admin, "destination", "mutual_tls"),
    ):
        samples = scrape(admin)
        requests = pick(samples, "istio_requests_total")
        expected = {**common, "reporter": reporter, "connection_security_policy": security}
        assert sorted((labels["grpc_response_status"], v) for labels, v in requests) == [
            ("0", 4.0),
            ("5", 2.0),
        ], admin
        for labels, _ in requests:
            assert {k: v for k, v in labels.items() if k != "grpc_response_status"} == expected, admin
        # Request bytes: the DATA payload, each message with its 5-byte gRPC prefix.
        assert total(samples, "istio_request_bytes_sum", grpc_response_status="5") == 2 * (
            5 + missing.ByteSize()
        )
        assert total(samples, "istio_request_bytes_count") == 6
        assert total(samples, "istio_response_bytes_sum", grpc_response_status="0") > 0
        assert total(samples, "istio_request_duration_milliseconds_count", grpc_response_status="0") == 4
        assert total(samples, "istio_request_duration_milliseconds_sum") > 0
        assert pick(samples, "grpc_mesh_config_info") == [({"version": "static-1"}, 1.0)]
        assert total(samples, "grpc_mesh_certificate_expiry_seconds") > 0


def test_a_control_planes_metrics_show_its_sidecars(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(TRUST_DOMAIN, now=datetime.now(UTC))
    specs = [
        SidecarSpec("echo", {"version": "v2"}, app_kind="echo"),
        SidecarSpec("client", dependencies=["echo"]),
    ]
    with procs.ProcessGroup(grace=10.0, log_dir=tmp_path / "logs") as group:
        try:
            control_plane = ControlPlaneProcess(group, tmp_path)
            control_plane.start(warmup_ms=0)
            sidecars = start_sidecars(group, tmp_path, ca, control_plane.grpc, specs)
            wait_all_ready(sidecars, 30)
            control_plane.wait_until_all_applied(2, 30)
            echo, client = sidecars

            def acked() -> Any:
                samples = scrape(control_plane.http)
                return total(samples, "grpc_mesh_sidecars_config_state", state="ACK") == 2

            wait_for(acked, 10, "both sidecars ACK in the control plane's metrics")
            samples = scrape(control_plane.http)
            assert total(samples, "grpc_mesh_sidecars_connected") == 2
            assert total(samples, "grpc_mesh_acks_total") >= 2
            assert total(samples, "grpc_mesh_nacks_total") == 0
            assert pick(samples, "grpc_mesh_push_latency_seconds_count")

            with channel(client.outbound, "echo") as ch:
                assert ch.unary_unary(ECHO + "Unary")(b"hi", timeout=10) == b"hi"
            client_samples = scrape(client.admin)
            # The outbound version is the label of the endpoint the call went to.
            assert pick(client_samples, "istio_requests_total", reporter="source") == [
                (
                    {
                        "reporter": "source",
                        "source_workload": "client",
                        "destination_service": "echo",
                        "destination_version": "v2",
                        "request_protocol": "grpc",
                        "response_code": "200",
                        "grpc_response_status": "0",
                        "connection_security_policy": "none",
                    },
                    1.0,
                )
            ]
            version = client.config_dump()["version"]
            assert pick(client_samples, "grpc_mesh_config_info") == [({"version": version}, 1.0)]
            assert total(client_samples, "grpc_mesh_config_applied_total") >= 1
            assert total(client_samples, "grpc_mesh_discovery_connected") == 1
            assert total(client_samples, "grpc_mesh_config_nacked") == 0
            assert total(scrape(echo.admin), "grpc_mesh_discovery_connected") == 1
        except BaseException as exc:
            exc.add_note(logs_note(tmp_path))
            raise
        codes = group.stop_all()
        check_exit_codes(codes)
