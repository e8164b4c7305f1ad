"""PeerAuthentication end to end with real processes: a control plane, the echo app behind its
sidecar, and a client sidecar. The same inbound port refuses plaintext under STRICT (the default)
and accepts both plaintext and mutual TLS under PERMISSIVE; a pushed change applies without a
restart, and going back to STRICT also closes (GOAWAY) the plaintext connections already open.
A certificate from another CA is refused in both modes; plaintext callers have no principal."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from control_plane.ca import CertificateAuthority, SpiffeId, issue_workload_files
from meshctl import procs
from tests.integration.test_mesh_security import tls_client
from tests.support import h2_client
from tests.support.clients import ECHO, channel
from tests.support.control_plane_mesh import (
    NAMESPACE,
    TRUST_DOMAIN,
    ControlPlaneProcess,
    RunningSidecar,
    SidecarSpec,
    check_exit_codes,
    logs_note,
    policy_spec,
    start_sidecars,
    wait_all_ready,
    wait_for_endpoints,
)
from tests.support.mesh import http_get, wait_for

pytestmark = pytest.mark.integration

TIMEOUT = 30.0


def peer_authentication(mode: str) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": NAMESPACE},
        "spec": {"mtls": {"mode": mode}},
    }


ALLOW_MESH_PRINCIPALS = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "mesh-only", "namespace": NAMESPACE},
    "spec": {"rules": [{"from": [{"source": {"principals": ["*"]}}]}]},
}


def apply(control_plane: ControlPlaneProcess, root: Path, *documents: dict[str, Any]) -> None:
    path = root / "policy.yaml"
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    control_plane.ok("apply", "-f", str(path), "--wait", "--timeout", "30s")


def echo(address: str, body: bytes) -> bytes:
    with channel(address) as ch:
        reply: bytes = ch.unary_unary(ECHO + "Unary")(body, timeout=5)
        return reply


def counters(sidecar: RunningSidecar) -> dict[str, int]:
    status, body = http_get(sidecar.admin, "/stats")
    assert status == 200, body
    result: dict[str, int] = json.loads(body)["counters"]
    return result


def test_strict_by_default_permissive_when_pushed_and_back(tmp_path: Path) -> None:
    root = tmp_path
    now = datetime.now(UTC)
    ca = CertificateAuthority.create(TRUST_DOMAIN, now=now)
    prober = SpiffeId(TRUST_DOMAIN, NAMESPACE, "prober")
    mesh_cert = issue_workload_files(ca, prober, root / "prober", now=now)
    foreign_ca = CertificateAuthority.create(TRUST_DOMAIN, now=now)
    foreign_cert = issue_workload_files(foreign_ca, prober, root / "foreign", now=now)
    mesh_tls = tls_client(mesh_cert, mesh_cert)
    foreign_tls = tls_client(mesh_cert, foreign_cert)  # trusts the mesh CA, presents another CA's cert
    specs = [SidecarSpec("echo", app_kind="echo"), SidecarSpec("client", dependencies=["echo"])]
    with procs.ProcessGroup(grace=10.0, log_dir=root / "logs") as group:
        try:
            control_plane = ControlPlaneProcess(group, root)
            control_plane.start(warmup_ms=0)
            server, client = start_sidecars(group, root, ca, control_plane.grpc, specs, timeout=TIMEOUT)
            wait_all_ready([server, client], TIMEOUT)
            inbound = server.inbound
            wait_for_endpoints(client, "echo", TIMEOUT)
            assert server.config_dump()["peer_authentication"] == {"mode": "STRICT", "policy": ""}

            # STRICT, by default: mTLS with a mesh certificate only.
            assert echo(client.outbound, b"via mTLS") == b"via mTLS"
            assert h2_client.speaks_h2(inbound, mesh_tls)
            assert not h2_client.speaks_h2(inbound)
            assert not h2_client.speaks_h2(inbound, foreign_tls)
            with pytest.raises(grpc.RpcError) as refused:
                echo(inbound, b"plaintext")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            assert counters(server)["inbound.plaintext_refused"] >= 2
            assert counters(server)["inbound.tls_refused"] >= 1

            # PERMISSIVE: plaintext and mTLS on the same port; another CA's certificate still not.
            apply(control_plane, root, peer_authentication("PERMISSIVE"))
            assert server.config_dump()["peer_authentication"] == {
                "mode": "PERMISSIVE",
                "policy": "default/default",
            }
            assert h2_client.speaks_h2(inbound)
            assert h2_client.speaks_h2(inbound, mesh_tls)
            assert not h2_client.speaks_h2(inbound, foreign_tls)
            assert echo(inbound, b"plaintext") == b"plaintext"
            assert echo(client.outbound, b"via mTLS") == b"via mTLS"

            # A plaintext caller has no principal: a policy admitting any principal denies it.
            apply(control_plane, root, peer_authentication("PERMISSIVE"), ALLOW_MESH_PRINCIPALS)
            with pytest.raises(grpc.RpcError) as denied:
                echo(inbound, b"plaintext")
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
            assert echo(client.outbound, b"via mTLS") == b"via mTLS"

            # Back to STRICT while a plaintext connection is open: it is sent away (GOAWAY), and
            # its next call cannot reconnect in plaintext.
            control_plane.ok("delete", "authorizationpolicy", "mesh-only", "-n", NAMESPACE)
            wait_for(
                lambda: policy_spec(server.config_dump(), "AuthorizationPolicy", "mesh-only") is None,
                TIMEOUT,
                "the echo sidecar to drop the AuthorizationPolicy",
            )
            with channel(inbound) as open_plaintext:
                call = open_plaintext.unary_unary(ECHO + "Unary")
                assert call(b"open", timeout=5) == b"open"
                apply(control_plane, root, peer_authentication("STRICT"))
                assert not h2_client.speaks_h2(inbound)
                assert echo(client.outbound, b"via mTLS") == b"via mTLS"

                def plaintext_refused() -> bool:
                    try:
                        call(b"again", timeout=5)
                    except grpc.RpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
                        return True
                    return False

                wait_for(plaintext_refused, TIMEOUT, "the open plaintext connection to be closed")
        except BaseException as exc:
            exc.add_note(logs_note(root))
            raise
        codes = group.stop_all()
        check_exit_codes(codes)
