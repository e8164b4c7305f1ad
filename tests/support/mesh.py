"""A small mesh of real processes on loopback, for the data-path integration tests.

    client (the test) ──► sidecar "client" outbound ──mTLS──► sidecar of APP inbound ──► APP

Every APP (an echo server, or the example users service) runs behind a sidecar of its own; one
client-only sidecar knows all of them by name. Certificates come from a fresh CA in the mesh's
directory; a second, unrelated CA issues a certificate nobody trusts (`foreign`). Every listener
binds port 0 and is learned from ready files; processes run under meshctl.procs and, when the
mesh stops, each must exit 0 on SIGTERM (apps a test killed on purpose excepted).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from control_plane.ca import CertificateAuthority, SpiffeId, WorkloadFiles, issue_workload_files
from meshctl import procs
from meshctl.demo.mesh import child_env

REPO = Path(__file__).resolve().parents[2]
TRUST_DOMAIN = "cluster.local"
NAMESPACE = "default"
START_TIMEOUT = 20.0
STOP_GRACE = 10.0
CLIENT = "client"

AppKind = Literal["echo", "users"]
GRPC_SERVICES: dict[AppKind, list[str]] = {"echo": ["test.Echo"], "users": ["demo.v1.Users"]}


@dataclass(frozen=True)
class AppSpec:
    name: str  # the mesh service name (what clients put in :authority)
    kind: AppKind


@dataclass
class Workload:
    """One app and its sidecar."""

    name: str
    app: procs.ManagedProcess
    app_address: str
    sidecar: procs.ManagedProcess
    inbound: str
    admin: str
    tls: WorkloadFiles


@dataclass
class Mesh:
    root: Path
    group: procs.ProcessGroup
    client: procs.ManagedProcess  # the client-only sidecar ("sidecar A")
    outbound: str
    admin: str
    client_tls: WorkloadFiles
    foreign_tls: WorkloadFiles  # from a CA the mesh does not trust, same trust domain
    workloads: dict[str, Workload]
    killed: set[str] = field(default_factory=set)  # process names a test killed on purpose

    def kill(self, proc: procs.ManagedProcess, timeout: float = 10.0) -> None:
        """SIGKILL one process (a test's deliberate crash) and wait until it is gone."""
        self.killed.add(proc.name)
        os.kill(proc.pid, signal.SIGKILL)
        wait_for(proc.has_exited, timeout, f"{proc.name} to die")

    def logs(self) -> str:
        parts = []
        for log in sorted(self.root.glob("logs/*.log")):
            parts.append(f"--- {log.name} ---\n{procs.log_tail(log)}")
        return "\n".join(parts)


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll `condition()` until it is true; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http_get(address: str, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET http://address/path: (status, body); HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), bytes(exc.read())


def admin_stats(address: str) -> dict[str, Any]:
    status, body = http_get(address, "/stats")
    assert status == 200, body
    stats: dict[str, Any] = json.loads(body)
    return stats


def connections_accepted_on(port: int) -> int:
    """Established TCP connections whose local end is loopback `port` (a listener's accepted
    connections), IPv4 or IPv4-mapped IPv6."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "01" and local.endswith(f"0100007F:{port:04X}"):
                count += 1
    return count


def vm_rss_kib(pid: int) -> int:
    """The resident set size of a process, from /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def warm_up(mesh: Mesh, service: str) -> None:
    """One small echo call through the mesh to `service`, which opens the sidecars' upstream
    connections."""
    from tests.support.clients import ECHO, channel

    with channel(mesh.outbound, service) as ch:
        assert ch.unary_unary(ECHO + "Unary")(b"warm-up", timeout=10) == b"warm-up"


def _app_argv(spec: AppSpec, ready: Path) -> list[str]:
    if spec.kind == "echo":
        return procs.python_argv("-m", "tests.support.echo_server", "--ready-file", str(ready))
    return procs.python_argv(
        "-m", "services.users", "--listen", "127.0.0.1:0", "--version", "v1",
        "--instance", f"{spec.name}-1", "--ready-file", str(ready),
    )  # fmt: skip


def _sidecar_config(
    path: Path,
    service: str,
    tls: WorkloadFiles,
    *,
    app: str | None,
    upstreams: dict[str, tuple[list[str], str]],
    max_message_bytes: int,
    drain_seconds: float,
    access_log: Path | None = None,
) -> Path:
    listeners = {"admin": "127.0.0.1:0"}
    if app is None:
        listeners["outbound"] = "127.0.0.1:0"
    else:
        listeners["inbound"] = "127.0.0.1:0"
    config: dict[str, Any] = {
        "service": service,
        "namespace": NAMESPACE,
        "labels": {"version": "v1"},
        "listeners": listeners,
        "tls": {"cert": str(tls.cert), "key": str(tls.key), "ca": str(tls.ca)},
        "max_message_bytes": max_message_bytes,
        "drain_seconds": drain_seconds,
        "trust_domain": TRUST_DOMAIN,
    }
    if app is not None:
        config["app"] = app
    if access_log is not None:
        config["access_log"] = {"path": str(access_log)}
    if upstreams:
        config["services"] = {
            name: {"grpc_services": grpc, "endpoints": [{"address": address, "labels": {"version": "v1"}}]}
            for name, (grpc, address) in upstreams.items()
        }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def access_log_path(root: Path, name: str) -> Path:
    """Where the sidecar of `name` (or the client's) writes its access log, when it has one."""
    return root / f"access-{name}.log"


def _sidecar_argv(config: Path, ready: Path) -> list[str]:
    return procs.python_argv("-m", "meshctl", "sidecar", "--config", str(config), "--ready-file", str(ready))


def _issue(ca: CertificateAuthority, service: str, out: Path, now: datetime) -> WorkloadFiles:
    return issue_workload_files(ca, SpiffeId(TRUST_DOMAIN, NAMESPACE, service), out, now=now)


@contextlib.contextmanager
def running_mesh(
    root: Path,
    apps: Sequence[AppSpec],
    *,
    max_message_bytes: int = 64 << 20,
    drain_seconds: float = 5.0,
    app_front: Callable[[str, str], str] | None = None,
    access_log: bool = False,
) -> Iterator[Mesh]:
    """Start the apps, their sidecars and the client sidecar; stop them all at the end and check
    that each exited 0 (a process the test killed on purpose excepted).

    `app_front(name, app_address)`, when given, returns the address a workload's sidecar sends
    its inbound calls to instead of the app's own (something the test puts in front of the app).
    `access_log`: every sidecar logs its calls to `access_log_path(root, name)`.
    """
    root.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca = CertificateAuthority.create(TRUST_DOMAIN, now=now)
    foreign_ca = CertificateAuthority.create(TRUST_DOMAIN, now=now)
    certs = root / "certs"
    foreign_tls = _issue(foreign_ca, "intruder", root / "foreign", now)
    client_tls = _issue(ca, CLIENT, certs / CLIENT, now)
    logs = root / "logs"
    env = child_env()
    with procs.ProcessGroup(grace=STOP_GRACE, log_dir=logs) as group:
        mesh: Mesh | None = None
        try:
            app_procs = {
                spec.name: group.start(
                    f"app-{spec.name}",
                    _app_argv(spec, root / f"app-{spec.name}.json"),
                    root / f"app-{spec.name}.json",
                    env=env,
                    cwd=REPO,
                )
                for spec in apps
            }
            app_addresses = {
                name: str(p.wait_ready(START_TIMEOUT)["address"]) for name, p in app_procs.items()
            }
            workload_tls: dict[str, WorkloadFiles] = {}
            sidecars: dict[str, procs.ManagedProcess] = {}
            for spec in apps:
                tls = workload_tls[spec.name] = _issue(ca, spec.name, certs / spec.name, now)
                app = app_addresses[spec.name]
                if app_front is not None:
                    app = app_front(spec.name, app)
                config = _sidecar_config(
                    root / f"sidecar-{spec.name}.yaml",
                    spec.name,
                    tls,
                    app=app,
                    upstreams={},
                    max_message_bytes=max_message_bytes,
                    drain_seconds=drain_seconds,
                    access_log=access_log_path(root, spec.name) if access_log else None,
                )
                ready = root / f"sidecar-{spec.name}.json"
                sidecars[spec.name] = group.start(
                    f"sidecar-{spec.name}", _sidecar_argv(config, ready), ready, env=env, cwd=REPO
                )
            workloads: dict[str, Workload] = {}
            for spec in apps:
                ready_info = sidecars[spec.name].wait_ready(START_TIMEOUT)
                workloads[spec.name] = Workload(
                    spec.name,
                    app_procs[spec.name],
                    app_addresses[spec.name],
                    sidecars[spec.name],
                    str(ready_info["inbound"]),
                    str(ready_info["admin"]),
                    workload_tls[spec.name],
                )
            upstreams = {spec.name: (GRPC_SERVICES[spec.kind], workloads[spec.name].inbound) for spec in apps}
            config = _sidecar_config(
                root / f"sidecar-{CLIENT}.yaml",
                CLIENT,
                client_tls,
                app=None,
                upstreams=upstreams,
                max_message_bytes=max_message_bytes,
                drain_seconds=drain_seconds,
                access_log=access_log_path(root, CLIENT) if access_log else None,
            )
            ready = root / f"sidecar-{CLIENT}.json"
            client = group.start(f"sidecar-{CLIENT}", _sidecar_argv(config, ready), ready, env=env, cwd=REPO)
            info = client.wait_ready(START_TIMEOUT)
            assert info["pid"] == client.pid
            assert "inbound" not in info
            mesh = Mesh(
                root,
                group,
                client,
                str(info["outbound"]),
                str(info["admin"]),
                client_tls,
                foreign_tls,
                workloads,
            )
            yield mesh
        except BaseException as exc:
            unclean = _stop_all(group, mesh, logs)
            if unclean:
                exc.add_note(unclean)
            raise
        unclean = _stop_all(group, mesh, logs)
        if unclean:
            raise AssertionError(unclean)


def _stop_all(group: procs.ProcessGroup, mesh: Mesh | None, logs: Path) -> str:
    """Stop every process; describe those that did not exit 0 (empty when all did)."""
    codes = group.stop_all()
    killed = mesh.killed if mesh is not None else set()
    unclean = {name: code for name, code in codes.items() if code != 0 and name not in killed}
    if not unclean:
        return ""
    tails = "\n".join(f"--- {log.name} ---\n{procs.log_tail(log)}" for log in sorted(logs.glob("*.log")))
    return f"processes did not exit 0 on SIGTERM: {unclean}\n{tails}"
