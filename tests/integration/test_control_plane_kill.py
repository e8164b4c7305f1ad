"""Kill -9 the control plane under traffic, with real processes:

    the test ──► sidecar A "client" (outbound) ──mTLS──► sidecar B "echo" (inbound) ──► echo app
                        ▲ discovery ▲
                        └── meshctl control-plane (SIGKILLed, then restarted on the same
                            data dir and the same ports)

While a background thread calls A→B twenty times a second, the control plane is killed; calls
go on for about two seconds with it gone, then it is started again on the same data dir and
ports. No call may fail at any point; both sidecars reconnect and ACK the current revision;
every resource and every revision of its history is still there; and a change applied after the
restart reaches both sidecars.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

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
from tests.support.mesh import wait_for
from tests.support.traffic import CALLS_PER_SECOND, Traffic

pytestmark = pytest.mark.integration

START_TIMEOUT = 30.0
# Calls made with the control plane dead: about two seconds' worth.
CALLS_WHILE_DOWN = 2 * CALLS_PER_SECOND
# The restarted control plane keeps its default warm-up (3 s, longer than the sidecars' longest
# reconnect delay), so it sends nothing before both sidecars are back; then the push and the ACKs.
RECONNECT_TIMEOUT = 30.0

DESTINATION_RULE = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "DestinationRule",
    "metadata": {"name": "echo"},
    "spec": {"host": "echo", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
}


def virtual_service(timeout: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "echo"},
        "spec": {
            "hosts": ["echo"],
            "http": [{"route": [{"destination": {"host": "echo", "subset": "v1"}}], "timeout": timeout}],
        },
    }


def stored(control_plane: ControlPlaneProcess) -> dict[str, Any]:
    """Every resource (`meshctl get KIND -A -o json`, each kind) and the whole history of the two
    resources this test writes (`meshctl history`, and the REST revisions with their specs)."""
    gets = [("get", kind, "-A", "-o", "json") for kind in KINDS]
    histories = [("history", kind, "echo") for kind in ("vs", "dr")]
    outputs = control_plane.ok_all(*gets, *histories)
    revisions = [
        control_plane.rest("GET", f"/api/v1/resources/{kind}/default/echo/revisions")
        for kind in ("VirtualService", "DestinationRule")
    ]
    assert all(reply.status == 200 for reply in revisions), revisions
    return {
        "get": dict(zip(KINDS, map(json.loads, outputs[: len(gets)]), strict=True)),
        "history": outputs[len(gets) :],
        "revisions": [reply.json() for reply in revisions],  # with every revision's spec
    }


def apply_and_wait(control_plane: ControlPlaneProcess, *documents: dict[str, Any]) -> int:
    """`meshctl apply -f - --wait` with both sidecars connected; returns the revision applied."""
    out = control_plane.ok(
        "apply", "-f", "-", "--wait", "--timeout", "30s", stdin=yaml.safe_dump_all(documents, sort_keys=False)
    )
    match = re.search(r"^2 sidecars applied revision (\d+) \(", out, re.MULTILINE)
    assert match, out
    return int(match[1])


def assert_both_ack(control_plane: ControlPlaneProcess, revision: int) -> None:
    status = control_plane.status_json()
    assert status["storeRevision"] == revision, status
    assert [(s["service"], s["connected"], s["state"], s["appliedRevision"]) for s in status["sidecars"]] == [
        ("client", True, "ACK", revision),
        ("echo", True, "ACK", revision),
    ], status


def echo_endpoints(client: RunningSidecar) -> list[str]:
    services = client.config_dump()["config"]["services"]
    return [e["address"] for e in services.get("echo", {}).get("endpoints", [])]


def test_kill_9_under_traffic_loses_no_call_and_no_revision(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(TRUST_DOMAIN, now=datetime.now(UTC))
    with procs.ProcessGroup(grace=10.0, log_dir=tmp_path / "logs") as group:
        traffic: Traffic | None = None
        try:
            control_plane = ControlPlaneProcess(group, tmp_path)
            first = control_plane.start(warmup_ms=0)
            echo, client = start_sidecars(
                group,
                tmp_path,
                ca,
                control_plane.grpc,
                [
                    SidecarSpec("echo", dependencies=["echo"], app_kind="echo"),
                    SidecarSpec("client", dependencies=["echo"]),
                ],
                timeout=START_TIMEOUT,
            )
            wait_all_ready([echo, client], START_TIMEOUT)
            wait_for(
                lambda: echo_endpoints(client) == [echo.inbound], START_TIMEOUT, "A to learn B's endpoint"
            )

            # Some history: the destination rule, then a virtual service changed twice.
            apply_and_wait(control_plane, DESTINATION_RULE, virtual_service("5s"))
            apply_and_wait(control_plane, virtual_service("4s"))
            revision = apply_and_wait(control_plane, virtual_service("3500ms"))
            before = stored(control_plane)
            assert [len(h.splitlines()) for h in before["history"]] == [4, 2], before  # headers + 3 and 1

            traffic = Traffic(client.outbound)
            traffic.start()
            traffic.wait_for_calls(CALLS_PER_SECOND, 10)

            control_plane.kill()
            down = traffic.count()
            # The sidecars notice the control plane is gone and keep serving on their last snapshot.
            wait_for(
                lambda: not client.config_dump()["discovery"]["connected"], 10, "A to see the stream end"
            )
            traffic.wait_for_calls(down + CALLS_WHILE_DOWN, 10 + CALLS_WHILE_DOWN / CALLS_PER_SECOND)
            assert traffic.failed() == []

            # Same data dir, same ports, default warm-up.
            restarted = control_plane.start_retrying(
                time.monotonic() + START_TIMEOUT, grpc_listen=first["grpc"], http_listen=first["http"]
            )
            assert (restarted["grpc"], restarted["http"]) == (first["grpc"], first["http"])
            control_plane.wait_until_all_applied(2, RECONNECT_TIMEOUT, revision)
            assert_both_ack(control_plane, revision)
            assert client.config_dump()["discovery"]["connected"] is True
            assert echo_endpoints(client) == [echo.inbound]
            assert stored(control_plane) == before

            # A change after the restart reaches both sidecars.
            after = apply_and_wait(control_plane, virtual_service("3s"))
            assert after == revision + 1
            assert_both_ack(control_plane, after)
            for sidecar in (client, echo):
                dump = sidecar.config_dump()
                assert dump["store_revision"] == after, sidecar.name
                assert policy_spec(dump, "VirtualService", "echo") == virtual_service("3s")["spec"]
                assert policy_spec(dump, "DestinationRule", "echo") == DESTINATION_RULE["spec"]

            traffic.wait_for_calls(traffic.count() + CALLS_PER_SECOND // 2, 10)
            traffic.stop()
            assert traffic.failed() == []
            assert traffic.count() >= CALLS_PER_SECOND + CALLS_WHILE_DOWN
        except BaseException as exc:
            if traffic is not None:
                traffic.stop()
                exc.add_note("failed calls:\n" + "\n".join(traffic.failed() or ["(none)"]))
            exc.add_note(logs_note(tmp_path))
            raise
        check_exit_codes(group.stop_all())
