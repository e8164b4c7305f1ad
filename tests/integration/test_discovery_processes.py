"""Real `meshctl sidecar` processes (on uvloop) whose endpoints come from a control plane.

    client (the test) ──► sidecar "client" outbound ──mTLS──► sidecar "echo" inbound ──► echo app
                              ▲ config pushed over mesh.v1.DiscoveryService ▲
                              └──── DiscoveryServicer (in this test, own thread) ┘

Neither sidecar config lists a service: the client sidecar learns echo's address, labels and
gRPC services from the control plane once both have registered.
"""

from __future__ import annotations

import json
import os
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from control_plane.ca import CertificateAuthority, issue_workload_files
from control_plane.registry import AckState
from control_plane.resources import Change, ResourceKey
from control_plane.spiffe import SpiffeId
from control_plane.sqlite_store import SqliteStore
from meshctl import procs
from meshctl.demo.mesh import child_env
from tests.support.clients import ECHO, channel
from tests.support.discovery import RunningControlPlane, ThreadedControlPlane
from tests.support.mesh import REPO, http_get, wait_for

pytestmark = pytest.mark.integration

START_TIMEOUT = 20.0
VS_ECHO = {"hosts": ["echo"], "http": [{"route": [{"destination": {"host": "echo"}}]}]}


def sidecar_config(path: Path, root: Path, ca: CertificateAuthority, service: str, **fields: Any) -> Path:
    tls = issue_workload_files(
        ca, SpiffeId("cluster.local", "default", service), root / "certs" / service, now=datetime.now(UTC)
    )
    config = {
        "service": service,
        "namespace": "default",
        "labels": {"version": "v1"},
        "tls": {"cert": str(tls.cert), "key": str(tls.key), "ca": str(tls.ca)},
        "drain_seconds": 1.0,
        **fields,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def sidecar_argv(config: Path, ready: Path) -> list[str]:
    return procs.python_argv(
        "-m", "meshctl", "sidecar", "--config", str(config), "--ready-file", str(ready), "--log-level", "INFO"
    )


def config_dump(admin: str) -> dict[str, Any]:
    status, body = http_get(admin, "/config_dump")
    assert status == 200, body
    dump: dict[str, Any] = json.loads(body)
    return dump


def is_ready(admin: str) -> bool:
    return http_get(admin, "/ready")[0] == 200


def test_a_call_crosses_two_sidecars_whose_endpoints_came_from_the_control_plane(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.sqlite3")
    ca = CertificateAuthority.create("cluster.local", now=datetime.now(UTC))
    control = ThreadedControlPlane(store, grace=2.0, debounce=0.02)
    env = child_env()
    with control.started() as cp, procs.ProcessGroup(grace=10.0, log_dir=tmp_path / "logs") as group:
        try:
            app = group.start(
                "echo-app",
                procs.python_argv(
                    "-m", "tests.support.echo_server", "--ready-file", str(tmp_path / "app.json")
                ),
                tmp_path / "app.json",
                env=env,
                cwd=REPO,
            )
            app_address = str(app.wait_ready(START_TIMEOUT)["address"])
            echo_config = sidecar_config(
                tmp_path / "echo.yaml",
                tmp_path,
                ca,
                "echo",
                listeners={"inbound": "127.0.0.1:0", "admin": "127.0.0.1:0"},
                app=app_address,
                control_plane=cp.address,
                grpc_services=["test.Echo"],
            )
            client_config = sidecar_config(
                tmp_path / "client.yaml",
                tmp_path,
                ca,
                "client",
                listeners={"outbound": "127.0.0.1:0", "admin": "127.0.0.1:0"},
                control_plane=cp.address,
                dependencies=["echo"],
            )
            echo = group.start(
                "sidecar-echo",
                sidecar_argv(echo_config, tmp_path / "echo.json"),
                tmp_path / "echo.json",
                env=env,
                cwd=REPO,
            )
            client = group.start(
                "sidecar-client",
                sidecar_argv(client_config, tmp_path / "client.json"),
                tmp_path / "client.json",
                env=env,
                cwd=REPO,
            )
            echo_info = echo.wait_ready(START_TIMEOUT)
            client_info = client.wait_ready(START_TIMEOUT)
            inbound, outbound = str(echo_info["inbound"]), str(client_info["outbound"])

            # Ready means: a snapshot from the control plane is applied.
            wait_for(lambda: is_ready(echo_info["admin"]) and is_ready(client_info["admin"]), 20, "ready")

            def echo_endpoints() -> list[str]:
                services = config_dump(client_info["admin"])["config"]["services"]
                return [e["address"] for e in services.get("echo", {}).get("endpoints", [])]

            wait_for(lambda: echo_endpoints() == [inbound], 20, "the client sidecar to learn echo's endpoint")
            dump = config_dump(client_info["admin"])
            assert dump["config"]["services"]["echo"]["grpc_services"] == ["test.Echo"]
            assert dump["config"]["services"]["echo"]["endpoints"][0]["identity"] == (
                "spiffe://cluster.local/ns/default/sa/echo"
            )
            assert dump["discovery"]["connected"] is True
            assert dump["identity"] == "spiffe://cluster.local/ns/default/sa/client"

            with channel(outbound, "echo") as ch:
                assert ch.unary_unary(ECHO + "Unary")(b"by name", timeout=10) == b"by name"
            # By gRPC service name (the authority is just the address): the registry says who serves it.
            with channel(outbound, outbound) as ch:
                assert ch.unary_unary(ECHO + "Unary")(b"by grpc service", timeout=10) == b"by grpc service"

            def both_acked(running: RunningControlPlane) -> bool:
                records = {r.node_id: r for r in running.registry.sidecars()}
                return len(records) == 2 and all(
                    r.connected and r.state is AckState.ACK and r.applied_version == r.sent_version
                    for r in records.values()
                )

            control.wait_for(both_acked, 10, "both sidecars to ack")
            records = control.read(lambda running: running.registry.sidecars())
            echo_record = next(r for r in records if r.service == "echo")
            assert echo_record.inbound_address == inbound
            assert echo_record.admin_address == echo_info["admin"]
            assert echo_record.identity == "spiffe://cluster.local/ns/default/sa/echo"
            assert echo_record.grpc_services == ("test.Echo",)

            # A policy change reaches both processes, which both apply it.
            store.apply(
                [Change(ResourceKey("VirtualService", "default", "echo"), VS_ECHO)], datetime.now(UTC)
            )
            revision = store.revision()
            control.read(lambda running: running.servicer.notify_changed())

            async def caught_up() -> bool:
                assert control.running is not None
                return await control.running.servicer.wait_for_revision(revision, 10)

            assert control.call(caught_up)
            dump = config_dump(client_info["admin"])
            assert [p["name"] for p in dump["policies"]] == ["echo"]
            assert dump["store_revision"] == revision

            # The echo app dies: its sidecar sees its health watch fail and reports it not serving,
            # so the control plane takes its endpoint out of the client's snapshot at once.
            assert config_dump(echo_info["admin"])["app_serving"] is True
            os.kill(app.pid, signal.SIGKILL)
            wait_for(app.has_exited, 10, "the echo app to die")
            group.stop(app)
            wait_for(lambda: echo_endpoints() == [], 10, "echo's endpoint to leave the client's snapshot")
            echo_node = echo_record.node_id
            after = control.read(lambda running: running.registry.get(echo_node))
            assert after is not None and after.connected and not after.serving
            assert config_dump(echo_info["admin"])["app_serving"] is False
        except BaseException as exc:
            logs = "\n".join(
                f"--- {log.name} ---\n{procs.log_tail(log)}"
                for log in sorted((tmp_path / "logs").glob("*.log"))
            )
            exc.add_note(logs)
            raise
        codes = group.stop_all()
        assert all(code == 0 for code in codes.values()), codes
    store.close()
