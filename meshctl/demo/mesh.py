"""Launch the example mesh on loopback: a fresh CA and workload certificates, the users
and orders apps each behind a sidecar, and a client-only sidecar for the load generator.

Every listener binds port 0 and is learned from the ready file of the process that
owns it, with one exception: the orders sidecar must know the orders app's port before
the app can start (the app in turn needs the sidecar's outbound port). That port is
picked free just before; if someone takes it first, the pair is started again.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from control_plane.ca import CertificateAuthority, SpiffeId, WorkloadFiles, issue_workload_files
from meshctl import procs

TRUST_DOMAIN = "cluster.local"
NAMESPACE = "default"
# The load stops before the mesh does, so draining has little to wait for; bound it well
# inside the supervisor's grace so a sidecar always exits by itself.
DRAIN_SECONDS = 2.0
STOP_GRACE = 5.0
BIND_ATTEMPTS = 3
BIND_ERROR_EXIT = 2  # services exit with this when they cannot listen (services.common.server)
REPO_ROOT = Path(__file__).resolve().parents[2]
GEN_DIR = REPO_ROOT / "gen"


def child_env() -> dict[str, str]:
    """Environment for the demo's children: this checkout (and its generated stubs) importable,
    unbuffered output so logs are current."""
    paths = [str(REPO_ROOT)]
    if GEN_DIR.is_dir():
        paths.append(str(GEN_DIR))
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {"PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def ensure_stubs_importable() -> None:
    """Make `demo.v1` importable in this process when running from a checkout that is not installed."""
    try:
        import demo.v1  # noqa: F401
    except ImportError:
        if GEN_DIR.is_dir() and str(GEN_DIR) not in sys.path:
            sys.path.append(str(GEN_DIR))


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the caller must cope with losing a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Sidecar:
    name: str
    outbound: str
    inbound: str | None  # None for a client-only sidecar
    admin: str
    config: Path

    def serving(self, grpc_service: str) -> tuple[str, str]:
        """(gRPC service, inbound address): this sidecar as an upstream in another's config."""
        if self.inbound is None:
            raise procs.ProcessError(f"sidecar-{self.name} reported no inbound address in its ready file")
        return grpc_service, self.inbound


@dataclass
class DemoMesh:
    data_dir: Path
    log_dir: Path
    apps: dict[str, str] = field(default_factory=dict)  # app name -> address
    sidecars: dict[str, Sidecar] = field(default_factory=dict)  # service -> its sidecar

    @property
    def entry(self) -> str:
        """Where clients of the mesh connect: the load generator's sidecar outbound port."""
        return self.sidecars["loadgen"].outbound


def issue_certificates(certs_dir: Path, services: list[str]) -> dict[str, WorkloadFiles]:
    """A fresh CA (saved under certs_dir/ca) and one workload certificate per service."""
    for sub in ("ca", "workloads"):
        shutil.rmtree(certs_dir / sub, ignore_errors=True)
    ca = CertificateAuthority.create(TRUST_DOMAIN, now=datetime.now(UTC))
    ca.save(certs_dir / "ca")
    return {
        name: issue_workload_files(ca, SpiffeId(TRUST_DOMAIN, NAMESPACE, name), certs_dir / "workloads")
        for name in services
    }


def sidecar_config(
    service: str,
    tls: WorkloadFiles,
    *,
    app: str | None,
    upstreams: dict[str, tuple[str, str]],
) -> dict[str, Any]:
    """The static sidecar YAML. upstreams: service -> (gRPC service name, sidecar inbound address)."""
    config: dict[str, Any] = {
        "service": service,
        "namespace": NAMESPACE,
        "labels": {"version": "v1"},
        "listeners": {"outbound": "127.0.0.1:0", "inbound": "127.0.0.1:0", "admin": "127.0.0.1:0"},
        "tls": {"cert": str(tls.cert), "key": str(tls.key), "ca": str(tls.ca)},
        "drain_seconds": DRAIN_SECONDS,
        "services": {
            name: {
                "grpc_services": [grpc_service],
                "endpoints": [{"address": address, "labels": {"version": "v1"}}],
            }
            for name, (grpc_service, address) in upstreams.items()
        },
    }
    if app is None:  # client only: an inbound listener would have nowhere to relay to
        del config["listeners"]["inbound"]
    else:
        config["app"] = app
    return config


class Launcher:
    """Starts the demo's processes into a ProcessGroup, each waited for until ready."""

    def __init__(
        self,
        group: procs.ProcessGroup,
        data_dir: Path,
        *,
        ready_timeout: float = 20.0,
        on_ready: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.group = group
        self.on_ready = on_ready
        self.mesh = DemoMesh(data_dir=data_dir, log_dir=data_dir / "logs")
        self.run_dir = data_dir / "run"
        self.ready_timeout = ready_timeout
        self.env = child_env()

    def _start(self, name: str, args: list[str]) -> tuple[procs.ManagedProcess, dict[str, Any]]:
        ready = self.run_dir / f"{name}.ready.json"
        argv = procs.python_argv(*args, "--ready-file", str(ready))
        proc = self.group.start(name, argv, ready, env=self.env, log_dir=self.mesh.log_dir)
        try:
            info = proc.wait_ready(self.ready_timeout)
        except procs.ProcessError:
            self.group.stop(proc)
            raise
        if self.on_ready is not None:
            self.on_ready(name, info)
        return proc, info

    def sidecar(self, service: str, config: dict[str, Any]) -> tuple[procs.ManagedProcess, Sidecar]:
        path = self.run_dir / f"sidecar-{service}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        proc, info = self._start(f"sidecar-{service}", ["-m", "meshctl", "sidecar", "--config", str(path)])
        sidecar = Sidecar(service, str(info["outbound"]), info.get("inbound"), str(info["admin"]), path)
        self.mesh.sidecars[service] = sidecar
        return proc, sidecar

    def app(self, name: str, module: str, listen: str, *extra: str) -> str:
        _, info = self._start(name, ["-m", module, "--listen", listen, *extra])
        self.mesh.apps[name] = str(info["address"])
        return self.mesh.apps[name]

    def launch(self) -> DemoMesh:
        for stale in (self.run_dir, self.mesh.log_dir):  # left by an earlier run in the same --dir
            shutil.rmtree(stale, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        certs = issue_certificates(self.mesh.data_dir / "certs", ["users", "orders", "loadgen"])

        users_app = self.app(
            "users", "services.users", "127.0.0.1:0", "--version", "v1", "--instance", "users-v1-a"
        )
        _, users = self.sidecar("users", sidecar_config("users", certs["users"], app=users_app, upstreams={}))
        to_users = {"users": users.serving("demo.v1.Users")}
        orders = self._orders_pair(certs["orders"], to_users)
        upstreams = {**to_users, "orders": orders.serving("demo.v1.Orders")}
        self.sidecar("loadgen", sidecar_config("loadgen", certs["loadgen"], app=None, upstreams=upstreams))
        return self.mesh

    def _orders_pair(self, tls: WorkloadFiles, upstreams: dict[str, tuple[str, str]]) -> Sidecar:
        """The orders sidecar, then the orders app on the port that sidecar relays to."""
        attempt = 1
        while True:
            app = f"127.0.0.1:{free_port()}"
            proc, sidecar = self.sidecar(
                "orders", sidecar_config("orders", tls, app=app, upstreams=upstreams)
            )
            try:
                self.app(
                    "orders", "services.orders", app, "--users-target", sidecar.outbound,
                    "--users-authority", "users", "--version", "v1", "--instance", "orders-a",
                )  # fmt: skip
                return sidecar
            except procs.ProcessExitedError as err:
                if err.returncode != BIND_ERROR_EXIT or attempt == BIND_ATTEMPTS:
                    raise
            self.group.stop(proc)
            attempt += 1
