"""nginx as the baseline proxy: one single-process nginx per role, config and state in a temp dir.

Each instance runs in the foreground without a master (`daemon off; master_process off;`), so the
process we start is the one that serves, and its /proc numbers are the proxy's. Connections to the
upstream are kept alive and reused, as the sidecar's pools do. Calls that do not end with
grpc-status 0 are written to a per-instance log, which the harness counts after every run.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from control_plane.ca import WorkloadFiles
from meshctl import procs

READY_TIMEOUT = 10.0
KEEPALIVE_UPSTREAM = 64
# Lift nginx's per-connection request caps (1000 by default) so no connection is recycled mid-run.
MANY_REQUESTS = 100_000_000


@dataclass(frozen=True, slots=True)
class NginxSite:
    """One nginx: where it listens, whether that is mTLS, and where it relays to (and how)."""

    name: str
    port: int
    upstream: str  # host:port
    listen_tls: WorkloadFiles | None = None  # TLS 1.3, client certificate required (as a sidecar's inbound)
    upstream_tls: WorkloadFiles | None = None  # grpcs:// to the upstream, presenting this certificate


def render_config(site: NginxSite, state_dir: Path) -> str:
    """The whole nginx.conf for `site`; every file it writes lives under state_dir."""
    tmp = state_dir / "tmp"
    listen = f"listen 127.0.0.1:{site.port}{' ssl' if site.listen_tls else ''} http2;"
    server_tls = ""
    if site.listen_tls is not None:
        server_tls = f"""
        ssl_certificate {site.listen_tls.cert};
        ssl_certificate_key {site.listen_tls.key};
        ssl_client_certificate {site.listen_tls.ca};
        ssl_verify_client on;
        ssl_protocols TLSv1.3;"""
    scheme = "grpc"
    upstream_tls = ""
    if site.upstream_tls is not None:
        scheme = "grpcs"
        # The mesh's certificates name a SPIFFE ID only (no DNS name, empty subject), so nginx's
        # peer check, which always includes a host name match, cannot pass: the chain is not
        # verified on this side. The server side still requires and verifies the client certificate.
        upstream_tls = f"""
            grpc_ssl_certificate {site.upstream_tls.cert};
            grpc_ssl_certificate_key {site.upstream_tls.key};
            grpc_ssl_protocols TLSv1.3;
            grpc_ssl_session_reuse on;
            grpc_ssl_verify off;"""
    return f"""# {site.name}: written by bench/nginx.py
daemon off;
master_process off;
worker_processes 1;
pid {state_dir / "nginx.pid"};
error_log {state_dir / "error.log"} warn;

events {{
    worker_connections 4096;
}}

http {{
    client_body_temp_path {tmp / "body"};
    proxy_temp_path {tmp / "proxy"};
    fastcgi_temp_path {tmp / "fastcgi"};
    uwsgi_temp_path {tmp / "uwsgi"};
    scgi_temp_path {tmp / "scgi"};

    map "$upstream_http_grpc_status$upstream_trailer_grpc_status" $grpc_not_ok {{
        "0" 0;
        default 1;
    }}
    log_format not_ok '$status grpc-status=[$upstream_http_grpc_status][$upstream_trailer_grpc_status] '
                      '$request_uri $upstream_addr';
    access_log {state_dir / "not-ok.log"} not_ok if=$grpc_not_ok;

    keepalive_requests {MANY_REQUESTS};
    keepalive_timeout 300s;

    upstream next_hop {{
        server {site.upstream};
        keepalive {KEEPALIVE_UPSTREAM};
        keepalive_requests {MANY_REQUESTS};
        keepalive_timeout 300s;
    }}

    server {{
        {listen}{server_tls}

        location / {{
            grpc_pass {scheme}://next_hop;{upstream_tls}
        }}
    }}
}}
"""


@dataclass
class RunningNginx:
    site: NginxSite
    process: procs.ManagedProcess
    state_dir: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.site.port}"

    @property
    def not_ok_log(self) -> Path:
        return self.state_dir / "not-ok.log"

    def not_ok_lines(self) -> list[str]:
        try:
            return self.not_ok_log.read_text().splitlines()
        except FileNotFoundError:
            return []


def start(group: procs.ProcessGroup, site: NginxSite, base_dir: Path) -> RunningNginx:
    """Write the config, start nginx in `group` and wait until it listens.

    nginx writes no ready file, so readiness is: its pid file names it (written after the
    listening socket is bound) and the port accepts a connection. The harness then writes the
    ready file itself, for anyone looking at the run directory.
    """
    state_dir = base_dir / site.name
    (state_dir / "tmp").mkdir(parents=True, exist_ok=True)
    conf = state_dir / "nginx.conf"
    conf.write_text(render_config(site, state_dir))
    ready_file = state_dir / "ready.json"
    argv = ["nginx", "-p", str(state_dir), "-c", str(conf), "-e", str(state_dir / "error.log")]
    proc = group.start(site.name, argv, ready_file)
    running = RunningNginx(site, proc, state_dir)
    _wait_listening(running)
    ready_file.write_text(json.dumps({"address": running.address, "pid": proc.pid}))
    return running


def _wait_listening(nginx: RunningNginx) -> None:
    proc = nginx.process
    pid_file = nginx.state_dir / "nginx.pid"
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if proc.has_exited():
            code = proc.popen.wait()
            raise procs.ProcessExitedError(
                f"{proc.name} (pid {proc.pid}) exited with code {code} before it listened; "
                f"{nginx.state_dir / 'error.log'}:\n{procs.log_tail(nginx.state_dir / 'error.log')}\n"
                f"{proc.log_path}:\n{procs.log_tail(proc.log_path)}",
                code,
            )
        if _pid_in(pid_file) == proc.pid and _accepts(nginx.site.port):
            return
        if time.monotonic() >= deadline:
            raise procs.ReadyTimeoutError(
                f"{proc.name} (pid {proc.pid}) was not listening on {nginx.address} after "
                f"{READY_TIMEOUT:.0f}s; {proc.log_path}:\n{procs.log_tail(proc.log_path)}"
            )
        time.sleep(procs.POLL_INTERVAL)


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
