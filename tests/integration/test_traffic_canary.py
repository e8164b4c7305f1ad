"""Canary routing end to end with real processes: a control plane, users v1 and users v2 behind
their own sidecars, and a client sidecar. A DestinationRule (subsets v1/v2) and a 90/10
VirtualService applied with `meshctl apply --wait` split real calls; a header route then sends
every `x-canary: true` call to v2. Which version served a call is its `x-mesh-version` reply
metadata."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import yaml
from demo.v1 import users_pb2, users_pb2_grpc

from control_plane.ca import CertificateAuthority
from meshctl import procs
from tests.support.control_plane_mesh import (
    TRUST_DOMAIN,
    ControlPlaneProcess,
    SidecarSpec,
    check_exit_codes,
    logs_note,
    start_sidecars,
    wait_all_ready,
)
from tests.support.mesh import wait_for

TIMEOUT = 30.0
CALLS = 2_000

RULE = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "DestinationRule",
    "metadata": {"name": "users"},
    "spec": {
        "host": "users",
        "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}],
    },
}


def virtual_service(*http: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "users"},
        "spec": {"hosts": ["users"], "http": list(http)},
    }


SPLIT = {
    "name": "split",
    "route": [
        {"destination": {"host": "users", "subset": "v1"}, "weight": 90},
        {"destination": {"host": "users", "subset": "v2"}, "weight": 10},
    ],
}
CANARY = {
    "name": "canary",
    "match": [{"headers": {"x-canary": {"exact": "true"}}}],
    "route": [{"destination": {"host": "users", "subset": "v2"}}],
}


def served_by(stub: Any, metadata: tuple[tuple[str, str], ...] = ()) -> str:
    try:
        _, call = stub.GetUser.with_call(users_pb2.GetUserRequest(id="nobody"), metadata=metadata, timeout=5)
    except grpc.RpcError as exc:  # NOT_FOUND: the reply's initial metadata still says who served
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc  # type: ignore[attr-defined]
        initial = exc.initial_metadata()  # type: ignore[attr-defined]
    else:
        initial = call.initial_metadata()
    return dict(initial)["x-mesh-version"]


def apply(control_plane: ControlPlaneProcess, root: Path, *documents: dict[str, Any]) -> None:
    path = root / "policy.yaml"
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    control_plane.ok("apply", "-f", str(path), "--wait", "--timeout", "30s")


def test_a_90_10_canary_and_a_header_route_through_real_sidecars(tmp_path: Path) -> None:
    root = tmp_path
    ca = CertificateAuthority.create(TRUST_DOMAIN, now=datetime.now(UTC))
    specs = [
        SidecarSpec("users", {"version": "v1"}, dependencies=["users"], app_kind="users"),
        SidecarSpec("users", {"version": "v2"}, dependencies=["users"], app_kind="users"),
        SidecarSpec("client", dependencies=["users"]),
    ]
    with procs.ProcessGroup(grace=10.0, log_dir=root / "logs") as group:
        try:
            control_plane = ControlPlaneProcess(group, root)
            control_plane.start(warmup_ms=0)
            sidecars = start_sidecars(group, root, ca, control_plane.grpc, specs, timeout=TIMEOUT)
            wait_all_ready(sidecars, TIMEOUT)
            client = sidecars[2]

            def both_versions_known() -> bool:
                services = client.config_dump()["config"]["services"]
                return len(services.get("users", {}).get("endpoints", [])) == 2

            wait_for(both_versions_known, TIMEOUT, "the client sidecar to know users v1 and v2")
            apply(control_plane, root, RULE, virtual_service(SPLIT))

            options = [("grpc.default_authority", "users")]
            with grpc.insecure_channel(client.outbound, options=options) as channel:
                stub = users_pb2_grpc.UsersStub(channel)
                counts = Counter(served_by(stub) for _ in range(CALLS))
                assert set(counts) <= {"v1", "v2"}
                assert abs(counts["v2"] / CALLS - 0.10) <= 0.03, counts

                apply(control_plane, root, RULE, virtual_service(CANARY, SPLIT))
                canaries = Counter(served_by(stub, (("x-canary", "true"),)) for _ in range(200))
                assert canaries == Counter({"v2": 200})
                others = Counter(served_by(stub, (("x-canary", "false"),)) for _ in range(500))
                assert others["v1"] > others["v2"] > 0
        except BaseException as exc:
            exc.add_note(logs_note(root))
            raise
        codes = group.stop_all()
        check_exit_codes(codes)
