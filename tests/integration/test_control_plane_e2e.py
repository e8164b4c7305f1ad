"""The control plane end to end, with real processes: one `meshctl control-plane` and 20
`meshctl sidecar` processes (two of them workloads with an echo app behind their inbound port, the
others client-only), all fed over their discovery streams.

- A change applied through the REST API (`meshctl apply --wait`) and one through the gRPC API
  reach all 20 sidecars; `meshctl status` shows every one of them ACK on the new revision and each
  sidecar's /config_dump holds the new spec.
- Invalid input through either API (invalid YAML, an unknown field, weights summing to 90, an
  unknown kind, malformed JSON, an oversize body) is refused with a message naming the problem;
  nothing is stored and nothing is pushed.
- `meshctl status` as a table names every sidecar's service and says they are all on the revision.

Kill -9 of the control plane under traffic is in test_control_plane_kill.py.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import json_format, struct_pb2
from mesh.v1 import policy_pb2, policy_pb2_grpc

from control_plane.ca import CertificateAuthority
from meshctl import procs
from tests.support.control_plane_mesh import (
    KINDS,
    TRUST_DOMAIN,
    ControlPlaneProcess,
    RunningSidecar,
    SidecarSpec,
    check_exit_codes,
    logs_note,
    policy_spec,
    start_sidecars,
    wait_all_ready,
)

pytestmark = pytest.mark.integration

SIDECARS = 20
WORKLOADS = 2  # of the 20, those with an echo app behind an inbound listener
START_TIMEOUT = 60.0
PUSH_TIMEOUT = 30.0
# How long "nothing was pushed" is watched for: many times the control plane's 30 ms debounce.
QUIET_WINDOW = 0.6

DESTINATION_RULE = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "DestinationRule",
    "metadata": {"name": "echo"},
    "spec": {
        "host": "echo",
        "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}],
    },
}


def virtual_service(v1: int, v2: int, timeout: str, name: str = "echo") -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name},
        "spec": {
            "hosts": [name],
            "http": [
                {
                    "route": [
                        {"destination": {"host": name, "subset": "v1"}, "weight": v1},
                        {"destination": {"host": name, "subset": "v2"}, "weight": v2},
                    ],
                    "timeout": timeout,
                }
            ],
        },
    }


@dataclass
class Fanout:
    root: Path
    control_plane: ControlPlaneProcess
    sidecars: list[RunningSidecar]


@pytest.fixture(scope="module")
def fanout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fanout]:
    """A control plane (no warm-up) and 20 sidecars, all connected and ACK; shared by the module's
    tests, which must leave every process running."""
    root = tmp_path_factory.mktemp("fanout")
    ca = CertificateAuthority.create(TRUST_DOMAIN, now=datetime.now(UTC))
    specs = [
        SidecarSpec("echo", {"version": f"v{i + 1}"}, dependencies=["echo"], app_kind="echo")
        for i in range(WORKLOADS)
    ] + [SidecarSpec(f"client-{i:02d}", dependencies=["echo"]) for i in range(SIDECARS - WORKLOADS)]
    with procs.ProcessGroup(grace=10.0, log_dir=root / "logs") as group:
        try:
            control_plane = ControlPlaneProcess(group, root)
            control_plane.start(warmup_ms=0)
            sidecars = start_sidecars(group, root, ca, control_plane.grpc, specs, timeout=START_TIMEOUT)
            wait_all_ready(sidecars, START_TIMEOUT)
            control_plane.wait_until_all_applied(SIDECARS, START_TIMEOUT)
            yield Fanout(root, control_plane, sidecars)
        except BaseException as exc:
            exc.add_note(logs_note(root))
            raise
        codes = group.stop_all()
        check_exit_codes(codes)


def expected_services() -> list[str]:
    return sorted(["echo"] * WORKLOADS + [f"client-{i:02d}" for i in range(SIDECARS - WORKLOADS)])


def admin_token_metadata(control_plane: ControlPlaneProcess) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {control_plane.token('admin')}")]


def grpc_apply(control_plane: ControlPlaneProcess, *documents: dict[str, Any]) -> Any:
    """PolicyService/Apply over gRPC with an admin token; returns the response (raises RpcError)."""
    request = policy_pb2.ApplyRequest(
        documents=[json_format.ParseDict(d, struct_pb2.Struct()) for d in documents]
    )
    with grpc.insecure_channel(control_plane.grpc) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        return stub.Apply(request, metadata=admin_token_metadata(control_plane), timeout=10)


def grpc_refusal(control_plane: ControlPlaneProcess, *documents: dict[str, Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        grpc_apply(control_plane, *documents)
    return info.value


def assert_all_on(fanout: Fanout, revision: int) -> dict[str, Any]:
    """`meshctl status -o json`: all 20 connected, ACK, having applied `revision`, the store's."""
    status = fanout.control_plane.status_json()
    assert status["storeRevision"] == revision, status
    sidecars = status["sidecars"]
    assert sorted(s["service"] for s in sidecars) == expected_services()
    assert [
        (s["service"], s["connected"], s["state"], s["appliedRevision"])
        for s in sidecars
        if not (s["connected"] and s["state"] == "ACK" and s["appliedRevision"] == revision)
    ] == []
    assert all(s["appliedVersion"] == s["sentVersion"] for s in sidecars), sidecars
    assert all(s["appliedVersion"].startswith(f"{revision}-") for s in sidecars), sidecars
    assert status["summary"] == {"connected": SIDECARS, "behind": 0, "disconnected": 0}
    return status


def assert_every_sidecar_holds(fanout: Fanout, revision: int, vs_spec: Any, dr_spec: Any) -> None:
    """Each sidecar's own /config_dump: the snapshot of `revision`, with these policies for echo."""
    for sidecar in fanout.sidecars:
        dump = sidecar.config_dump()
        where = f"{sidecar.name} ({sidecar.admin})"
        assert dump["store_revision"] == revision, where
        assert dump["discovery"]["connected"] is True, where
        assert dump["discovery"]["applied_revision"] == revision, where
        assert policy_spec(dump, "VirtualService", "echo") == vs_spec, where
        assert policy_spec(dump, "DestinationRule", "echo") == dr_spec, where
        endpoints = dump["config"]["services"]["echo"]["endpoints"]
        assert sorted(e["address"] for e in endpoints) == sorted(
            s.inbound for s in fanout.sidecars if s.spec.app_kind is not None
        ), where


def test_a_change_through_each_api_reaches_all_20_sidecars(fanout: Fanout) -> None:
    control_plane = fanout.control_plane
    policy = fanout.root / "echo-50-50.yaml"
    first = virtual_service(50, 50, "2s")
    policy.write_text(yaml.safe_dump_all([DESTINATION_RULE, first], sort_keys=False))

    # Through the REST API, as an operator would: apply, and wait for every sidecar.
    applied = control_plane.meshctl("apply", "-f", str(policy), "--wait", "--timeout", "30s")
    assert applied.code == 0, str(applied)
    lines = applied.out.splitlines()
    assert re.fullmatch(r"DestinationRule default/echo created \(resourceVersion \d+\)", lines[0]), lines
    match = re.fullmatch(r"VirtualService default/echo created \(resourceVersion (\d+)\)", lines[1])
    assert match, lines
    revision = int(match[1])
    assert re.fullmatch(rf"{SIDECARS} sidecars applied revision {revision} \(\d+\.\ds\)", lines[2]), lines
    assert len(lines) == 3, lines
    assert_all_on(fanout, revision)
    assert_every_sidecar_holds(fanout, revision, first["spec"], DESTINATION_RULE["spec"])

    # Through the gRPC API: a weight shift and a longer timeout.
    second = virtual_service(80, 20, "3s")
    response = grpc_apply(control_plane, second)
    assert [(r.action, r.resource.kind, r.resource.name) for r in response.results] == [
        ("updated", "VirtualService", "echo")
    ]
    new_revision = response.results[0].resource.resource_version
    assert new_revision > revision
    control_plane.wait_until_all_applied(SIDECARS, PUSH_TIMEOUT, new_revision)
    assert_all_on(fanout, new_revision)
    assert_every_sidecar_holds(fanout, new_revision, second["spec"], DESTINATION_RULE["spec"])


# -- bad input ----------------------------------------------------------------------------------------


def fingerprint(fanout: Fanout) -> dict[str, Any]:
    """What must not move when input is refused: every stored resource (as `meshctl get -A -o json`
    prints each kind, and the REST listing of all kinds), the store revision, and every sidecar's
    sent and applied versions, as the control plane and the sidecar itself report them."""
    control_plane = fanout.control_plane
    listing = control_plane.sidecars()
    everything = control_plane.rest("GET", "/api/v1/resources")
    assert everything.status == 200, everything
    listed = control_plane.ok_all(*(("get", kind, "-A", "-o", "json") for kind in KINDS))
    return {
        "get": dict(zip(KINDS, map(json.loads, listed), strict=True)),
        "resources": everything.json(),
        **pushed(fanout, listing),
    }


def pushed(fanout: Fanout, listing: dict[str, Any] | None = None) -> dict[str, Any]:
    """The store revision and what every sidecar was sent and applied."""
    listing = fanout.control_plane.sidecars() if listing is None else listing
    return {
        "storeRevision": int(listing["storeRevision"]),
        "registry": sorted(
            (s["nodeId"], s["sentVersion"], s["appliedVersion"], int(s["appliedRevision"]), s["state"])
            for s in listing["sidecars"]
        ),
        "dumps": sorted((s.name, s.config_dump()["version"]) for s in fanout.sidecars),
    }


def stays(read: Callable[[], Any], expected: Any, window: float) -> None:
    """Read again and again for `window` seconds: every read must equal `expected`. (Proving that
    something does not happen takes watching for a while; this is that while.)"""
    end = time.monotonic() + window
    while time.monotonic() < end:
        assert read() == expected


def error_of(reply: Any) -> dict[str, Any]:
    body = reply.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    return error


def test_invalid_input_is_refused_with_a_clear_error_and_nothing_is_stored_or_pushed(fanout: Fanout) -> None:
    control_plane = fanout.control_plane
    # Something stored and pushed to compare with, whichever tests ran before.
    echo = virtual_service(70, 30, "2s")
    baseline = yaml.safe_dump_all([DESTINATION_RULE, echo], sort_keys=False)
    control_plane.ok("apply", "-f", "-", "--wait", "--timeout", "30s", stdin=baseline)
    before = fingerprint(fanout)
    assert [(r["kind"], r["name"]) for r in before["resources"]["resources"]] == [
        ("DestinationRule", "echo"),
        ("VirtualService", "echo"),
    ], before

    # Invalid YAML: refused by meshctl before anything is sent, and by the REST API itself.
    local = control_plane.meshctl("apply", "-f", "-", stdin="kind: [VirtualService\n")
    assert local.code == 2 and "<stdin>:2:1: invalid YAML" in local.err, str(local)
    reply = control_plane.rest(
        "POST", "/api/v1/apply", b"kind: [VirtualService\n", content_type="application/yaml"
    )
    assert reply.status == 400, reply
    error = error_of(reply)
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["message"].startswith("document 1: invalid YAML: ")
    assert "line 2, column 1" in error["message"]

    # A field we do not support (Istio's gateways), through meshctl and through gRPC.
    gateways = {**echo, "spec": {**echo["spec"], "gateways": ["mesh"]}}
    unknown = control_plane.meshctl("apply", "-f", "-", stdin=yaml.safe_dump(gateways))
    assert unknown.code == 1, str(unknown)
    assert unknown.err.startswith(
        "meshctl apply: error: VirtualService echo: spec.gateways: field not supported"
    )
    refused = grpc_refusal(control_plane, gateways)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.details().startswith("VirtualService echo: spec.gateways: field not supported")

    # Weights summing to 90, after a valid document: the whole apply is refused, the valid one too.
    ninety = virtual_service(50, 40, "2s")
    fresh = virtual_service(100, 0, "1s", name="orders")
    batch = yaml.safe_dump_all([fresh, ninety], sort_keys=False)
    weights = control_plane.meshctl("apply", "-f", "-", stdin=batch)
    assert weights.code == 1, str(weights)
    assert "VirtualService echo: spec.http[0].route: weights sum to 90, must be 100" in weights.err
    refused = grpc_refusal(control_plane, fresh, ninety)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "VirtualService echo: spec.http[0].route: weights sum to 90, must be 100" in refused.details()
    assert control_plane.meshctl("get", "vs", "orders").code == 1

    # A kind we do not serve.
    gateway = {**echo, "kind": "Gateway"}
    kind = control_plane.meshctl("apply", "-f", "-", stdin=yaml.safe_dump(gateway))
    assert kind.code == 1, str(kind)
    assert 'kind: "Gateway" is not a supported kind' in kind.err and "VirtualService" in kind.err
    refused = grpc_refusal(control_plane, gateway)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert 'kind: "Gateway" is not a supported kind' in refused.details()

    # Malformed JSON, as a raw HTTP body.
    reply = control_plane.rest("POST", "/api/v1/apply", b'{"documents": [')
    assert reply.status == 400, reply
    error = error_of(reply)
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["message"].startswith("malformed JSON: ") and "line 1 column 16" in error["message"]
    assert error["reason"] == "malformed JSON"

    # An oversize body (valid JSON, 5 MiB; the limit is 4 MiB) on both APIs.
    huge = virtual_service(50, 50, "2s")
    huge["spec"]["hosts"] = ["x" * (5 << 20)]
    reply = control_plane.rest("POST", "/api/v1/apply", json.dumps({"documents": [huge]}).encode())
    assert reply.status == 413, reply
    assert error_of(reply) == {
        "code": "RESOURCE_EXHAUSTED",
        "message": "request body too large: the limit is 4194304 bytes",
    }
    refused = grpc_refusal(control_plane, huge)
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
    assert "larger than max" in refused.details() and "4194304" in refused.details()

    # Nothing stored, nothing sent, nothing applied — now, and for a while after.
    assert fingerprint(fanout) == before
    unchanged = {key: before[key] for key in ("storeRevision", "registry", "dumps")}
    stays(lambda: pushed(fanout), unchanged, QUIET_WINDOW)


def test_status_table_names_every_sidecar_and_their_common_revision(fanout: Fanout) -> None:
    control_plane = fanout.control_plane
    revision = control_plane.wait_until_all_applied(SIDECARS, PUSH_TIMEOUT)
    table = control_plane.ok("status").splitlines()
    assert table[0].split()[:2] == ["SERVICE", "NAMESPACE"]
    rows = table[1:-1]
    assert sorted(row.split()[0] for row in rows) == expected_services()
    for sidecar in fanout.sidecars:
        node_rows = [row for row in rows if row.split()[0] == sidecar.spec.service]
        assert node_rows and all(row.endswith("ACK") for row in node_rows), (sidecar.name, node_rows)
    for workload in (s for s in fanout.sidecars if s.spec.app_kind is not None):
        assert any(workload.inbound in row for row in rows), workload.inbound
    assert table[-1] == f"{SIDECARS} sidecars, all on revision {revision}"
