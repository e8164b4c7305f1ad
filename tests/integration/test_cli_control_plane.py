"""meshctl against a real control plane process: apply an example, then get, history, rollback
and delete round trips, auth refusals and a validation error, each through `python -m meshctl`
as an operator would run it; and `apply --wait` and `status` with real sidecars connected."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from control_plane.ca import CertificateAuthority, issue_workload_files
from control_plane.spiffe import SpiffeId
from meshctl import procs
from tests.support.mesh import http_get, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CANARY = REPO / "examples" / "policies" / "canary-90-10.yaml"
READY_TIMEOUT = 30.0
COMMAND_TIMEOUT = 60.0

ORDERS_V1 = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: orders
spec:
  hosts: [orders]
  http:
  - route:
    - destination: {host: orders}
    timeout: 2s
"""


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


@dataclass(frozen=True)
class ControlPlane:
    url: str
    data_dir: Path
    admin_token: str

    def meshctl(self, *argv: str, stdin: str = "", token: str | None = None) -> Result:
        env = dict(os.environ, MESHCTL_SERVER=self.url, MESHCTL_TOKEN=self.admin_token)
        if token is not None:
            env["MESHCTL_TOKEN"] = token
        done = subprocess.run(
            procs.python_argv("-m", "meshctl", *argv),
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, *argv: str, stdin: str = "") -> str:
        result = self.meshctl(*argv, stdin=stdin)
        assert result.code == 0, f"meshctl {' '.join(argv)} exited {result.code}: {result.err}"
        return result.out

    def token(self, role: str) -> str:
        done = subprocess.run(
            procs.python_argv(
                "-m", "meshctl", "token", "create", "--role", role, "--data-dir", str(self.data_dir)
            ),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=True,
        )
        return done.stdout.strip()


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    base = tmp_path_factory.mktemp("control-plane")
    data_dir = base / "data"
    argv = procs.python_argv(
        "-m", "meshctl", "control-plane",
        "--data-dir", str(data_dir),
        "--grpc-listen", "127.0.0.1:0",
        "--http-listen", "127.0.0.1:0",
        "--ready-file", str(base / "ready.json"),
    )  # fmt: skip
    proc = procs.start("control-plane", argv, base / "ready.json", cwd=REPO)
    try:
        ready = proc.wait_ready(READY_TIMEOUT)
        plane = ControlPlane(f"http://{ready['http']}", data_dir, "")
        yield ControlPlane(plane.url, data_dir, plane.token("admin"))
    finally:
        proc.stop()


def test_apply_an_example_then_read_it_back(control_plane: ControlPlane) -> None:
    out = control_plane.ok("apply", "-f", str(CANARY))
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("DestinationRule default/users created (resourceVersion ")
    assert lines[1].startswith("VirtualService default/users created (resourceVersion ")

    # Applying it again changes nothing; a dry run says so too.
    assert "unchanged (resourceVersion" in control_plane.ok("apply", "-f", str(CANARY))
    assert control_plane.ok("apply", "--dry-run", "-f", str(CANARY)).count("unchanged (dry run)") == 2

    table = control_plane.ok("get", "virtualservices")
    assert table.splitlines()[0].split() == ["NAME", "HOSTS", "RESOURCE", "VERSION", "AGE"]
    assert table.splitlines()[1].split()[:2] == ["users", "users"]

    stored = yaml.safe_load(control_plane.ok("get", "vs", "users", "-o", "yaml"))
    written = list(yaml.safe_load_all(CANARY.read_text()))[1]
    assert stored["apiVersion"] == "networking.istio.io/v1"
    assert stored["metadata"]["name"] == "users" and stored["metadata"]["namespace"] == "default"
    assert stored["spec"] == written["spec"]

    # What get prints, apply takes back: the same resource, unchanged.
    listed = control_plane.ok("get", "dr", "-o", "yaml")
    assert control_plane.ok("apply", "-f", "-", stdin=listed).startswith(
        "DestinationRule default/users unchanged"
    )


def test_update_history_rollback_and_delete(control_plane: ControlPlane) -> None:
    created = control_plane.ok("apply", "-f", "-", stdin=ORDERS_V1)
    assert created.startswith("VirtualService default/orders created")
    first = yaml.safe_load(control_plane.ok("get", "vs", "orders", "-o", "yaml"))
    v1 = int(first["metadata"]["resourceVersion"])

    diff = control_plane.ok("apply", "--dry-run", "-f", "-", stdin=ORDERS_V1.replace("2s", "3s"))
    assert diff.startswith("VirtualService default/orders updated (dry run)\n")
    assert "-  timeout: 2s" in diff and "+  timeout: 3s" in diff
    updated = control_plane.ok("apply", "-f", "-", stdin=ORDERS_V1.replace("2s", "3s"))
    assert updated.startswith("VirtualService default/orders updated (resourceVersion ")

    # The document read before the update carries its resourceVersion: applying it now conflicts.
    stale = control_plane.meshctl("apply", "-f", "-", stdin=yaml.safe_dump(first))
    assert stale.code == 1
    assert f"resourceVersion {v1}" in stale.err and "stale" in stale.err

    history = control_plane.ok("history", "vs", "orders").splitlines()
    assert history[0].split() == ["REVISION", "TIME", "CHANGE"]
    assert history[1].split()[0] == str(v1) and history[1].endswith("created")
    assert history[2].endswith("updated http[0].timeout")

    assert "(dry run): rolled back" in control_plane.ok(
        "rollback", "vs", "orders", "--to", str(v1), "--dry-run"
    )
    assert (
        json.loads(control_plane.ok("get", "vs", "orders", "-o", "json"))["spec"]["http"][0]["timeout"]
        == "3s"
    )
    rolled = control_plane.ok("rollback", "vs", "orders", "--to", str(v1))
    assert rolled.startswith("VirtualService default/orders updated (resourceVersion ")
    assert json.loads(control_plane.ok("get", "vs", "orders", "-o", "json"))["spec"] == first["spec"]
    assert control_plane.ok("history", "vs", "orders").splitlines()[-1].endswith(f"(spec of revision {v1})")

    assert "deleted (dry run)" in control_plane.ok("delete", "vs", "orders", "--dry-run")
    control_plane.ok("get", "vs", "orders")
    assert "VirtualService default/orders deleted" in control_plane.ok("delete", "virtualservice", "orders")
    gone = control_plane.meshctl("get", "vs", "orders")
    assert gone.code == 1 and "not found" in gone.err
    assert control_plane.ok("history", "vs", "orders").splitlines()[-1].endswith("deleted")


def test_invalid_policy_is_refused_and_nothing_is_stored(control_plane: ControlPlane) -> None:
    before = control_plane.ok("get", "vs", "-A", "-o", "json")
    bad_weights = ORDERS_V1.replace(
        "    - destination: {host: orders}\n",
        "    - destination: {host: orders, subset: v1}\n      weight: 50\n"
        "    - destination: {host: orders, subset: v2}\n      weight: 40\n",
    )
    refused = control_plane.meshctl(
        "apply", "-f", "-", stdin=ORDERS_V1.replace("orders", "ok") + "---\n" + bad_weights
    )
    assert refused.code == 1
    assert "spec.http[0].route" in refused.err and "100" in refused.err
    not_yaml = control_plane.meshctl("apply", "-f", "-", stdin="kind: [VirtualService\n")
    assert not_yaml.code == 2 and "<stdin>:2:1: invalid YAML" in not_yaml.err
    assert control_plane.ok("get", "vs", "-A", "-o", "json") == before


def test_tokens_are_checked(control_plane: ControlPlane) -> None:
    anonymous = control_plane.meshctl("get", "vs", token="")
    assert anonymous.code == 1 and "MESHCTL_TOKEN" in anonymous.err
    forged = control_plane.meshctl("get", "vs", token=control_plane.admin_token[:-4] + "AAAA")
    assert forged.code == 1
    reader = control_plane.token("read")
    assert control_plane.meshctl("get", "vs", token=reader).code == 0
    assert control_plane.meshctl("status", token=reader).code == 0
    denied = control_plane.meshctl("apply", "-f", "-", stdin=ORDERS_V1, token=reader)
    assert denied.code == 1 and denied.err.startswith("meshctl apply: error: ")


def test_status_and_wait_with_no_sidecars(control_plane: ControlPlane) -> None:
    status = control_plane.ok("status")
    assert status.startswith("no sidecars connected (store revision ")
    listing = json.loads(control_plane.ok("status", "-o", "json"))
    assert listing["sidecars"] == [] and listing["storeRevision"] > 0
    waited = control_plane.ok("apply", "-f", str(CANARY), "--wait", "--timeout", "10s")
    assert "no sidecars connected" in waited


def test_a_stopped_control_plane_is_reported_as_unreachable(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    argv = procs.python_argv(
        "-m", "meshctl", "control-plane", "--data-dir", str(tmp_path / "data"),
        "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--ready-file", str(ready),
    )  # fmt: skip
    proc = procs.start("control-plane", argv, ready, cwd=REPO)
    try:
        address = proc.wait_ready(READY_TIMEOUT)["http"]
    finally:
        proc.stop()
    plane = ControlPlane(f"http://{address}", tmp_path / "data", "x")
    result = plane.meshctl("get", "vs")
    assert result.code == 1
    assert (
        result.err
        == f"meshctl get: error: control plane not reachable at http://{address}: connection refused\n"
    )


def start_control_plane(group: procs.ProcessGroup, base: Path) -> ControlPlane:
    data_dir = base / "data"
    argv = procs.python_argv(
        "-m", "meshctl", "control-plane", "--data-dir", str(data_dir), "--debounce-ms", "10",
        "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--ready-file", str(base / "cp.json"),
    )  # fmt: skip
    ready = group.start("control-plane", argv, base / "cp.json", cwd=REPO).wait_ready(READY_TIMEOUT)
    plane = ControlPlane(f"http://{ready['http']}", data_dir, "")
    return ControlPlane(plane.url, data_dir, plane.token("admin"))


def start_client_sidecar(
    group: procs.ProcessGroup, base: Path, ca: CertificateAuthority, name: str, control_plane: str
) -> str:
    """A client-only sidecar (outbound and admin listeners) fed by the control plane; returns its
    admin address once its first snapshot is applied."""
    tls = issue_workload_files(
        ca, SpiffeId("cluster.local", "default", name), base / name, now=datetime.now(UTC)
    )
    config = base / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "service": name,
                "namespace": "default",
                "labels": {"version": "v1", "instance": name},
                "listeners": {"outbound": "127.0.0.1:0", "admin": "127.0.0.1:0"},
                "tls": {"cert": str(tls.cert), "key": str(tls.key), "ca": str(tls.ca)},
                "control_plane": control_plane,
                "drain_seconds": 1.0,
            }
        )
    )
    ready_file = base / f"{name}.json"
    argv = procs.python_argv(
        "-m", "meshctl", "sidecar", "--config", str(config), "--ready-file", str(ready_file)
    )
    admin = str(group.start(name, argv, ready_file, cwd=REPO).wait_ready(READY_TIMEOUT)["admin"])
    wait_for(
        lambda: http_get(admin, "/ready")[0] == 200, READY_TIMEOUT, f"{name} to apply its first snapshot"
    )
    return admin


def test_apply_wait_returns_once_every_sidecar_acked_and_status_shows_it(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("cluster.local", now=datetime.now(UTC))
    with procs.ProcessGroup(grace=10.0, log_dir=tmp_path / "logs") as group:
        plane = start_control_plane(group, tmp_path)
        grpc_address = json.loads((tmp_path / "cp.json").read_text())["grpc"]
        for name in ("client-a", "client-b"):
            start_client_sidecar(group, tmp_path, ca, name, grpc_address)

        out = plane.ok("apply", "-f", str(CANARY), "--wait", "--timeout", "20s")
        revision = int(out.splitlines()[1].rsplit(" ", 1)[1].rstrip(")"))
        assert out.splitlines()[2].startswith(f"2 sidecars applied revision {revision} (")

        listing = json.loads(plane.ok("status", "-o", "json"))
        assert listing["storeRevision"] == revision
        assert [(s["service"], s["state"], s["connected"]) for s in listing["sidecars"]] == [
            ("client-a", "ACK", True),
            ("client-b", "ACK", True),
        ]
        assert all(s["appliedRevision"] == revision for s in listing["sidecars"])
        table = plane.ok("status").splitlines()
        assert table[0].split()[:3] == ["SERVICE", "NAMESPACE", "NODE"]
        assert "instance=client-a,version=v1" in table[1] and table[1].endswith("ACK")
        assert table[-1] == f"2 sidecars, all on revision {revision}"

        # A change after that: the wait covers it too, and nothing is left behind.
        out = plane.ok("apply", "--wait", "-f", "-", stdin=ORDERS_V1)
        assert f"2 sidecars applied revision {revision + 1}" in out
