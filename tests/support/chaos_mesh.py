"""Three echo servers behind their own sidecars, a client sidecar and a control plane: the mesh
of the resilience chaos tests (tests/integration/test_resilience_chaos.py) and of
bench/outlier.py. `fault` tells one echo server (directly) to be slow, fail or not serve;
`apply` pushes a DestinationRule for "echo" and waits for every sidecar's ACK.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import yaml

from control_plane.ca import CertificateAuthority
from meshctl import procs
from tests.support.clients import ECHO, control
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
from tests.support.mesh import http_get, wait_for

TIMEOUT = 30.0


@dataclass
class ChaosMesh:
    root: Path
    control_plane: ControlPlaneProcess
    echoes: list[RunningSidecar]
    client: RunningSidecar

    def apply(self, traffic_policy: dict[str, Any]) -> None:
        rule = {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "echo"},
            "spec": {"host": "echo", "trafficPolicy": traffic_policy},
        }
        path = self.root / "rule.yaml"
        path.write_text(yaml.safe_dump(rule, sort_keys=False))
        self.control_plane.ok("apply", "-f", str(path), "--wait", "--timeout", "30s")

    def fault(self, echo: RunningSidecar, **spec: int | bool) -> None:
        """Tell one echo server (directly, not through the mesh) to be slow or to fail."""
        assert echo.app is not None and echo.app.ready is not None
        with grpc.insecure_channel(str(echo.app.ready["address"])) as ch:
            ch.unary_unary(ECHO + "Fault")(control(spec), timeout=5)

    def clusters(self) -> dict[str, Any]:
        status, body = http_get(self.client.admin, "/clusters")
        assert status == 200, body
        clusters: dict[str, Any] = json.loads(body)
        return clusters

    def metrics(self) -> str:
        status, body = http_get(self.client.admin, "/metrics")
        assert status == 200, body
        return body.decode()


@contextlib.contextmanager
def running_chaos_mesh(root: Path, echoes: int = 3) -> Iterator[ChaosMesh]:
    """Start the mesh; yield once the client sidecar knows every echo endpoint; stop it all and
    check every process exited 0."""
    ca = CertificateAuthority.create(TRUST_DOMAIN, now=datetime.now(UTC))
    specs = [SidecarSpec("echo", app_kind="echo") for _ in range(echoes)]
    specs.append(SidecarSpec("client", dependencies=["echo"]))
    with procs.ProcessGroup(grace=10.0, log_dir=root / "logs") as group:
        try:
            control_plane = ControlPlaneProcess(group, root)
            control_plane.start(warmup_ms=0)
            sidecars = start_sidecars(group, root, ca, control_plane.grpc, specs, timeout=TIMEOUT)
            wait_all_ready(sidecars, TIMEOUT)
            mesh = ChaosMesh(root, control_plane, sidecars[:echoes], sidecars[echoes])

            def all_known() -> bool:
                services = mesh.client.config_dump()["config"]["services"]
                return len(services.get("echo", {}).get("endpoints", [])) == echoes

            wait_for(all_known, TIMEOUT, "the client sidecar to know every echo endpoint")
            yield mesh
        except BaseException as exc:
            exc.add_note(logs_note(root))
            raise
        check_exit_codes(group.stop_all())
