"""Launch the demo mesh on loopback: a control plane with its store and a fresh CA, users v1
(two instances) and users v2 (one), orders, and a client-only sidecar for the load generator,
every app behind a sidecar that learns the mesh from the control plane and gets its certificate
from the control plane's CA (a join token per service, minted with the control plane's key).

Listeners bind port 0 and are learned from the ready file of the process that owns it, except
the ones a person types (`Ports`): the control plane's gRPC and REST ports and the load
generator's outbound port, fixed by default so the printed commands stay the same from run to
run; each is checked free before anything starts. The orders sidecar must know the orders app's
port before the app can start (the app in turn needs the sidecar's outbound port): that port is
picked free just before; if someone takes it first, the pair is started again.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from meshctl import procs

TRUST_DOMAIN = "cluster.local"
NAMESPACE = "default"
# The load stops before the mesh does, so draining has little to wait for; bound it well
# inside the supervisor's grace so a sidecar always exits by itself.
DRAIN_SECONDS = 2.0
STOP_GRACE = 5.0
# When one instance hangs, every call sent to it waits out the route's perTryTimeout and then
# retries: about rate x its share x perTryTimeout retries at once, far more than the default
# budget (20% of the calls in flight, at least 3) lets through in a mesh this small. The story's
# fault step shows retries keeping callers whole; a retry storm is what the budget is for at scale.
RETRY_BUDGET = {"percent": 100, "min_retry_concurrency": 50}
BIND_ATTEMPTS = 3
BIND_ERROR_EXIT = 2  # services exit with this when they cannot listen (services.common.server)
REPO_ROOT = Path(__file__).resolve().parents[2]
GEN_DIR = REPO_ROOT / "gen"
HOST = "127.0.0.1"
# The users instances: (instance name, version label).
USERS_INSTANCES = (("users-v1-a", "v1"), ("users-v1-b", "v1"), ("users-v2-a", "v2"))


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


def free_port(host: str = HOST) -> int:
    """A port nothing listens on right now (the caller must cope with losing a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def endpoints(admin: str, service: str) -> int:
    """How many endpoints of `service` the sidecar at `admin` routes to (its /config_dump); -1 when
    it cannot tell."""
    try:
        with urllib.request.urlopen(f"http://{admin}/config_dump", timeout=2.0) as reply:
            dump = json.loads(reply.read())
        return len(dump["config"]["services"][service]["endpoints"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def wait_routable(mesh: DemoMesh, timeout: float = 30.0) -> None:
    """Until every calling sidecar routes to every instance of what it calls (the control plane has
    registered each one, seen its app healthy and pushed it)."""
    expected = {"users": len(USERS_INSTANCES), "orders": 1}
    wanted = {"loadgen": expected, "orders": {"users": expected["users"]}}
    deadline = time.monotonic() + timeout
    while True:
        missing = [
            f"{instance} → {service}"
            for instance, services in wanted.items()
            for service, count in services.items()
            if endpoints(mesh.sidecars[instance].admin, service) < count
        ]
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise procs.ReadyTimeoutError(
                f"not every endpoint reached its callers after {timeout:.0f}s: {missing}"
            )
        time.sleep(procs.POLL_INTERVAL)


class PortInUse(procs.ProcessError):
    """A fixed port the demo needs is taken."""


@dataclass(frozen=True)
class Ports:
    """The ports a person types while the demo runs (0: any free port)."""

    control_plane_grpc: int = 15010
    control_plane_http: int = 15011
    entry: int = 15001  # the load generator sidecar's outbound listener

    @classmethod
    def any(cls) -> Ports:
        return cls(0, 0, 0)

    def check_free(self, host: str = HOST) -> None:
        """PortInUse naming the first fixed port something already listens on."""
        for what, port in (
            ("the control plane's gRPC API", self.control_plane_grpc),
            ("the control plane's REST API", self.control_plane_http),
            ("the mesh entry (the load generator sidecar's outbound listener)", self.entry),
        ):
            if port == 0:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError as exc:
                    raise PortInUse(
                        f"{host}:{port} ({what}) is in use ({exc.strerror}); stop what listens there "
                        "(`ss -ltnp 'sport = :" + str(port) + "'` shows it) or run with --any-ports"
                    ) from None


@dataclass
class Sidecar:
    name: str  # the process name: sidecar-<instance>
    service: str
    version: str
    outbound: str | None  # None: no outbound listener
    inbound: str | None  # None for a client-only sidecar
    admin: str
    config: Path


@dataclass
class ControlPlane:
    grpc: str
    http: str
    data_dir: Path

    @property
    def url(self) -> str:
        return f"http://{self.http}"


@dataclass
class DemoMesh:
    data_dir: Path
    log_dir: Path
    control_plane: ControlPlane | None = None
    apps: dict[str, str] = field(default_factory=dict)  # instance name -> address
    app_procs: dict[str, procs.ManagedProcess] = field(default_factory=dict)
    sidecars: dict[str, Sidecar] = field(default_factory=dict)  # instance name -> its sidecar

    @property
    def entry(self) -> str:
        """Where clients of the mesh connect: the load generator's sidecar outbound port."""
        outbound = self.sidecars["loadgen"].outbound
        assert outbound is not None
        return outbound

    @property
    def api(self) -> ControlPlane:
        assert self.control_plane is not None, "the control plane has not started"
        return self.control_plane

    def callers(self) -> list[Sidecar]:
        """The sidecars whose outbound metrics count calls into the mesh: the load generator's and
        the orders sidecar's (orders calls users)."""
        return [s for s in self.sidecars.values() if s.outbound is not None]


def write_join_tokens(control_plane_data: Path, out_dir: Path, services: list[str]) -> dict[str, Path]:
    """A join token per service (mode 0600 files in `out_dir`), signed with the control plane's key:
    what each sidecar shows the control plane's CA to get its first certificate."""
    from control_plane.auth import load_signing_key
    from control_plane.join_tokens import mint_join_token

    key = load_signing_key(control_plane_data)
    paths = {}
    for service in services:
        token = mint_join_token(key, namespace=NAMESPACE, service=service, now=datetime.now(UTC))
        path = out_dir / f"{service}.token"
        path.touch(mode=0o600)
        path.write_text(token + "\n")
        paths[service] = path
    return paths


def sidecar_config(
    service: str,
    join_token: Path,
    *,
    control_plane: str,
    version: str = "v1",
    app: str | None,
    grpc_services: list[str] | None = None,
    outbound: str | None = None,
    dependencies: list[str] | None = None,
) -> dict[str, Any]:
    """The YAML of a sidecar fed by the control plane. `app` None: client only (no inbound
    listener); `outbound` None: no outbound listener."""
    listeners = {"admin": f"{HOST}:0"}
    if outbound is not None:
        listeners["outbound"] = outbound
    if app is not None:
        listeners["inbound"] = f"{HOST}:0"
    config: dict[str, Any] = {
        "service": service,
        "namespace": NAMESPACE,
        "labels": {"version": version},
        "control_plane": control_plane,
        "listeners": listeners,
        "join_token": {"file": str(join_token)},  # the certificate comes from the control plane's CA
        "drain_seconds": DRAIN_SECONDS,
        "retry_budget": RETRY_BUDGET,
    }
    if app is not None:
        config["app"] = app
        config["grpc_services"] = list(grpc_services or ())
    if dependencies is not None:
        config["dependencies"] = dependencies
    return config


class Launcher:
    """Starts the demo's processes into a ProcessGroup, each waited for until ready."""

    def __init__(
        self,
        group: procs.ProcessGroup,
        data_dir: Path,
        *,
        ports: Ports | None = None,
        ready_timeout: float = 30.0,
        on_ready: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.group = group
        self.on_ready = on_ready
        self.ports = ports if ports is not None else Ports()
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

    def control_plane(self) -> ControlPlane:
        data = self.mesh.data_dir / "control-plane"
        _, info = self._start(
            "control-plane",
            [
                "-m", "meshctl", "control-plane", "--data-dir", str(data),
                "--grpc-listen", f"{HOST}:{self.ports.control_plane_grpc}",
                "--http-listen", f"{HOST}:{self.ports.control_plane_http}",
                "--warmup-ms", "0", "--debounce-ms", "20",
            ],
        )  # fmt: skip
        self.mesh.control_plane = ControlPlane(str(info["grpc"]), str(info["http"]), data)
        return self.mesh.control_plane

    def sidecar(self, instance: str, config: dict[str, Any]) -> tuple[procs.ManagedProcess, Sidecar]:
        name = f"sidecar-{instance}"
        path = self.run_dir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        proc, info = self._start(name, ["-m", "meshctl", "sidecar", "--config", str(path)])
        sidecar = Sidecar(
            name,
            str(config["service"]),
            str(config["labels"]["version"]),
            info.get("outbound"),
            info.get("inbound"),
            str(info["admin"]),
            path,
        )
        self.mesh.sidecars[instance] = sidecar
        return proc, sidecar

    def app(self, name: str, module: str, listen: str, *extra: str) -> str:
        proc, info = self._start(name, ["-m", module, "--listen", listen, *extra])
        self.mesh.apps[name] = str(info["address"])
        self.mesh.app_procs[name] = proc
        return self.mesh.apps[name]

    def launch(self) -> DemoMesh:
        self.ports.check_free()
        for stale in (self.run_dir, self.mesh.log_dir):  # left by an earlier run in the same --dir
            shutil.rmtree(stale, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        control_plane = self.control_plane().grpc
        tokens = write_join_tokens(self.mesh.api.data_dir, self.run_dir, ["users", "orders", "loadgen"])

        for instance, version in USERS_INSTANCES:
            app = self.app(
                instance, "services.users", f"{HOST}:0", "--version", version, "--instance", instance
            )
            config = sidecar_config(
                "users", tokens["users"], control_plane=control_plane, version=version, app=app,
                grpc_services=["demo.v1.Users"],
            )  # fmt: skip
            self.sidecar(instance, config)
        self._orders_pair(tokens["orders"], control_plane)
        entry = f"{HOST}:{self.ports.entry}"
        config = sidecar_config(
            "loadgen", tokens["loadgen"], control_plane=control_plane, app=None, outbound=entry,
            dependencies=["users", "orders"],
        )  # fmt: skip
        self.sidecar("loadgen", config)
        return self.mesh

    def _orders_pair(self, join_token: Path, control_plane: str) -> Sidecar:
        """The orders sidecar, then the orders app on the port that sidecar relays to."""
        attempt = 1
        while True:
            app = f"{HOST}:{free_port()}"
            config = sidecar_config(
                "orders", join_token, control_plane=control_plane, app=app, grpc_services=["demo.v1.Orders"],
                outbound=f"{HOST}:0", dependencies=["users"],
            )  # fmt: skip
            proc, sidecar = self.sidecar("orders", config)
            assert sidecar.outbound is not None
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
            del self.mesh.sidecars["orders"]
            attempt += 1
