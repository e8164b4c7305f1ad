"""`meshctl stat` and `meshctl top` against a real mesh: a control plane, users v1 and v2 behind
their sidecars, and a client sidecar. After known traffic (each reply says which version served
it, and whether it failed), stat's totals and success rates per version are exactly those calls,
from either reporter; over a window with traffic flowing the rate is positive; top refreshes."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from demo.v1 import users_pb2, users_pb2_grpc

from control_plane.ca import CertificateAuthority
from meshctl import procs
from tests.support.control_plane_mesh import (
    TRUST_DOMAIN,
    ControlPlaneProcess,
    RunningSidecar,
    SidecarSpec,
    check_exit_codes,
    logs_note,
    start_sidecars,
    wait_all_ready,
)
from tests.support.mesh import wait_for

pytestmark = pytest.mark.integration

TIMEOUT = 30.0


class Mesh:
    def __init__(self, control_plane: ControlPlaneProcess, sidecars: list[RunningSidecar]) -> None:
        self.control_plane = control_plane
        self.sidecars = sidecars
        self.client = sidecars[-1]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("meshctl-stat")
    ca = CertificateAuthority.create(TRUST_DOMAIN, now=datetime.now(UTC))
    specs = [
        SidecarSpec("users", {"version": "v1"}, app_kind="users"),
        SidecarSpec("users", {"version": "v2"}, app_kind="users"),
        SidecarSpec("client", dependencies=["users"]),
    ]
    with procs.ProcessGroup(grace=10.0, log_dir=root / "logs") as group:
        try:
            control_plane = ControlPlaneProcess(group, root)
            control_plane.start(warmup_ms=0)
            sidecars = start_sidecars(group, root, ca, control_plane.grpc, specs, timeout=TIMEOUT)
            wait_all_ready(sidecars, TIMEOUT)
            client = sidecars[-1]

            def both_versions_known() -> bool:
                services = client.config_dump()["config"]["services"]
                return len(services.get("users", {}).get("endpoints", [])) == 2

            wait_for(both_versions_known, TIMEOUT, "the client sidecar to know users v1 and v2")
            yield Mesh(control_plane, sidecars)
        except BaseException as exc:
            exc.add_note(logs_note(root))
            raise
        check_exit_codes(group.stop_all())


def _call(stub: Any, ok: bool) -> tuple[str, bool]:
    """One call (CreateUser succeeds, GetUser of nobody is NOT_FOUND): the version that served it."""
    try:
        if ok:
            _, call = stub.CreateUser.with_call(users_pb2.CreateUserRequest(name="Ada"), timeout=5)
        else:
            _, call = stub.GetUser.with_call(users_pb2.GetUserRequest(id="nobody"), timeout=5)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc  # type: ignore[attr-defined]
        return dict(exc.initial_metadata())["x-mesh-version"], False  # type: ignore[attr-defined]
    return dict(call.initial_metadata())["x-mesh-version"], True


def _stat(mesh: Mesh, *args: str) -> dict[str, dict[str, Any]]:
    out = json.loads(mesh.control_plane.ok("stat", "-o", "json", *args))
    return {f"{row['service']}/{row['version']}": row for row in out["rows"]}


def test_stat_shows_exactly_the_calls_made_per_version(mesh: Mesh) -> None:
    outcomes: Counter[tuple[str, bool]] = Counter()
    with grpc.insecure_channel(mesh.client.outbound, options=[("grpc.default_authority", "users")]) as ch:
        stub = users_pb2_grpc.UsersStub(ch)
        for i in range(60):
            outcomes[_call(stub, ok=i % 4 != 0)] += 1
    assert {version for version, _ in outcomes} == {"v1", "v2"}, outcomes

    for reporter, sidecars in (("destination", 1), ("source", 1)):
        rows = _stat(mesh, "--interval", "0", "--reporter", reporter)
        assert set(rows) == {"users/v1", "users/v2"}, rows
        for version in ("v1", "v2"):
            ok, failed = outcomes[version, True], outcomes[version, False]
            row = rows[f"users/{version}"]
            assert row["total"] == row["requests"] == ok + failed, (reporter, row)
            assert row["successRate"] == pytest.approx(ok / (ok + failed))
            assert row["sidecars"] == sidecars
            assert row["rps"] is None
            assert 0 < row["p50Ms"] <= row["p99Ms"]

    table = mesh.control_plane.ok("stat", "--interval", "0", "--service", "users").splitlines()
    assert table[0].split()[:3] == ["SERVICE", "VERSION", "SIDECARS"]
    assert [line.split()[:2] for line in table[1:]] == [["users", "v1"], ["users", "v2"]]
    # --admin reads the named sidecars directly, without the control plane
    v1_admin = mesh.sidecars[0].admin
    direct = json.loads(
        mesh.control_plane.ok(
            "stat", "-o", "json", "--interval", "0", "--admin", v1_admin, "--server", "http://127.0.0.1:1"
        )
    )
    assert [(r["version"], r["total"]) for r in direct["rows"]] == [
        ("v1", outcomes["v1", True] + outcomes["v1", False])
    ]


def test_a_window_with_traffic_has_a_rate_and_top_refreshes(mesh: Mesh) -> None:
    stop = threading.Event()

    def traffic() -> None:
        with grpc.insecure_channel(mesh.client.outbound, options=[("grpc.default_authority", "users")]) as ch:
            stub = users_pb2_grpc.UsersStub(ch)
            while not stop.is_set():
                _call(stub, ok=True)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        rows = _stat(mesh, "--interval", "1")
        top = mesh.control_plane.ok("top", "--interval", "0.5", "--count", "2")
    finally:
        stop.set()
        thread.join(10)
    assert set(rows) == {"users/v1", "users/v2"}
    for row in rows.values():
        assert row["requests"] > 0
        assert row["rps"] == pytest.approx(row["requests"], rel=0.5)  # over about one second
        assert row["successRate"] == 1.0
        assert row["total"] > row["requests"]
    tables = [block for block in top.split("\n\n") if block.strip()]
    assert len(tables) == 2, top
    for block in tables:
        lines = block.splitlines()
        assert lines[0] == "meshctl top: last 0.5s, reporter=destination"
        assert lines[1].split()[0] == "SERVICE"
        assert [line.split()[:2] for line in lines[2:]] == [["users", "v1"], ["users", "v2"]]


def test_unreachable_sidecars_and_control_plane_are_errors(mesh: Mesh, tmp_path: Path) -> None:
    result = mesh.control_plane.meshctl("stat", "--interval", "0", "--admin", "127.0.0.1:1")
    assert result.code == 1
    assert "cannot read 127.0.0.1:1" in result.err
    assert "none of the 1 sidecars' /metrics could be read" in result.err
    result = mesh.control_plane.meshctl("stat", "--interval", "-1")
    assert result.code == 2
    assert "--interval" in result.err
