"""The processes under test and the rows they make: one users app shared by every row, the sidecars
and the single-process nginx instances in front of it, all started into one ProcessGroup."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench import nginx
from control_plane.ca import CertificateAuthority, SpiffeId, WorkloadFiles, issue_workload_files
from meshctl import procs
from meshctl.demo.mesh import child_env, free_port

TRUST_DOMAIN = "cluster.local"
NAMESPACE = "default"
READY_TIMEOUT = 20.0
NGINX_BIND_ATTEMPTS = 3
ADMIN_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Proxy:
    """One proxy process of a row; `admin` is set for sidecars, `nginx` for nginx instances."""

    label: str
    kind: str  # "sidecar" or "nginx"
    pid: int
    admin: str | None = None
    nginx: nginx.RunningNginx | None = None


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    name: str
    path: str  # the hops, as a reader of the table wants them
    entry: str  # host:port that h2load and the gRPC check dial (plaintext h2)
    proxies: tuple[Proxy, ...]


@dataclass
class Topology:
    work_dir: Path
    app_address: str = ""
    app_pid: int = 0
    rows: list[Row] = field(default_factory=list)

    def row(self, key: str) -> Row:
        for row in self.rows:
            if row.key == key:
                return row
        raise KeyError(key)


def sidecar_stats(admin: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{admin}/stats", timeout=ADMIN_TIMEOUT) as reply:
        data: dict[str, Any] = json.load(reply)
    return data


def _issue_certificates(certs_dir: Path) -> dict[str, WorkloadFiles]:
    ca = CertificateAuthority.create(TRUST_DOMAIN, now=datetime.now(UTC))
    return {
        name: issue_workload_files(ca, SpiffeId(TRUST_DOMAIN, NAMESPACE, name), certs_dir)
        for name in ("client", "users")
    }


def _tls(files: WorkloadFiles) -> dict[str, str]:
    return {"cert": str(files.cert), "key": str(files.key), "ca": str(files.ca)}


class Launcher:
    """Starts every process the rows need, in dependency order, each waited for until ready."""

    def __init__(self, group: procs.ProcessGroup, work_dir: Path) -> None:
        self.group = group
        self.work_dir = work_dir
        self.run_dir = work_dir / "run"
        self.log_dir = work_dir / "logs"
        self.env = child_env()

    def _python(self, name: str, *args: str) -> dict[str, Any]:
        ready = self.run_dir / f"{name}.ready.json"
        argv = procs.python_argv(*args, "--ready-file", str(ready))
        proc = self.group.start(name, argv, ready, env=self.env, log_dir=self.log_dir)
        return proc.wait_ready(READY_TIMEOUT)

    def sidecar(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        path = self.run_dir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return self._python(name, "-m", "meshctl", "sidecar", "--config", str(path))

    def nginx(self, site_name: str, upstream: str, **tls: WorkloadFiles) -> nginx.RunningNginx:
        """nginx on a port picked free just before; started again on another if it lost the race."""
        for attempt in range(1, NGINX_BIND_ATTEMPTS + 1):
            site = nginx.NginxSite(site_name, free_port(), upstream, **tls)
            try:
                return nginx.start(self.group, site, self.work_dir / "nginx")
            except procs.ProcessExitedError:
                if attempt == NGINX_BIND_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def launch(self) -> Topology:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        certs = _issue_certificates(self.work_dir / "certs")
        client_tls, users_tls = certs["client"], certs["users"]
        topo = Topology(self.work_dir)

        app = self._python("app", "-m", "services.users", "--listen", "127.0.0.1:0",
                           "--version", "v1", "--instance", "bench-app")  # fmt: skip
        topo.app_address, topo.app_pid = str(app["address"]), int(app["pid"])

        sc_in = self.sidecar("sidecar-in", {
            "service": "users", "labels": {"version": "v1"},
            "listeners": {"inbound": "127.0.0.1:0", "admin": "127.0.0.1:0"},
            "app": topo.app_address, "tls": _tls(users_tls), "services": {},
        })  # fmt: skip
        sc_out = self.sidecar("sidecar-out", self._client_config(client_tls, str(sc_in["inbound"])))
        ngx_tls_in = self.nginx("nginx-tls-in", topo.app_address, listen_tls=users_tls)
        sc_out_ngx = self.sidecar("sidecar-out-to-nginx", self._client_config(client_tls, ngx_tls_in.address))
        ngx_h2c = self.nginx("nginx-h2c", topo.app_address)
        ngx_tls_out = self.nginx("nginx-tls-out", ngx_tls_in.address, upstream_tls=client_tls)
        ngx_to_sc = self.nginx("nginx-to-sidecar", str(sc_in["inbound"]), upstream_tls=client_tls)

        def sidecar(label: str, ready: dict[str, Any]) -> Proxy:
            return Proxy(label, "sidecar", int(ready["pid"]), admin=str(ready["admin"]))

        def ngx(label: str, running: nginx.RunningNginx) -> Proxy:
            return Proxy(label, "nginx", running.pid, nginx=running)

        topo.rows = [
            Row("1", "direct", "client → app", topo.app_address, ()),
            Row("2a", "sidecar outbound (+ nginx TLS end)",
                "client → sidecar A outbound → mTLS → nginx → app", str(sc_out_ngx["outbound"]),
                (sidecar("sidecar A", sc_out_ngx), ngx("nginx (TLS in)", ngx_tls_in))),
            Row("2b", "sidecar inbound (+ nginx TLS start)",
                "client → nginx → mTLS → sidecar B inbound → app", ngx_to_sc.address,
                (ngx("nginx (TLS out)", ngx_to_sc), sidecar("sidecar B", sc_in))),
            Row("3", "mesh: two sidecars", "client → sidecar A outbound → mTLS → sidecar B inbound → app",
                str(sc_out["outbound"]), (sidecar("sidecar A", sc_out), sidecar("sidecar B", sc_in))),
            Row("4", "nginx, one hop", "client → nginx → app", ngx_h2c.address, (ngx("nginx", ngx_h2c),)),
            Row("5", "nginx, two hops", "client → nginx 1 → mTLS → nginx 2 → app", ngx_tls_out.address,
                (ngx("nginx 1", ngx_tls_out), ngx("nginx 2", ngx_tls_in))),
        ]  # fmt: skip
        return topo

    @staticmethod
    def _client_config(tls: WorkloadFiles, endpoint: str) -> dict[str, Any]:
        """A client-only sidecar (outbound and admin listeners) whose `users` lives at `endpoint`."""
        return {
            "service": "client",
            "labels": {"version": "v1"},
            "listeners": {"outbound": "127.0.0.1:0", "admin": "127.0.0.1:0"},
            "tls": _tls(tls),
            "services": {"users": {"grpc_services": ["demo.v1.Users"], "endpoints": [{"address": endpoint}]}},
        }
