"""A real control plane process and `meshctl sidecar` processes fed by it, for the control plane's
end-to-end tests (tests/integration/test_control_plane_e2e.py, test_control_plane_kill.py).

    meshctl / REST / gRPC ──► meshctl control-plane ──► discovery stream ──► every sidecar

Everything binds port 0 and is learned from ready files (the control plane can also be started on
given ports, to restart it where its sidecars expect it); processes run under a meshctl.procs
ProcessGroup that the caller owns. Sidecars are started all at once and then waited for, so a
large mesh starts in about the time of its slowest member.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from control_plane.ca import CertificateAuthority, issue_workload_files
from control_plane.spiffe import SpiffeId
from meshctl import procs
from meshctl.demo.mesh import child_env
from tests.support.mesh import http_get, wait_for

REPO = Path(__file__).resolve().parents[2]
TRUST_DOMAIN = "cluster.local"
NAMESPACE = "default"
READY_TIMEOUT = 30.0
COMMAND_TIMEOUT = 60.0
REQUEST_TIMEOUT = 10.0

# Every kind the policy API stores: what a before/after comparison of the store lists.
KINDS = (
    "virtualservice",
    "destinationrule",
    "peerauthentication",
    "authorizationpolicy",
    "requestauthentication",
    "ratelimitpolicy",
)


@dataclass(frozen=True)
class Completed:
    """A finished `meshctl` run."""

    argv: tuple[str, ...]
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"meshctl {' '.join(self.argv)} exited {self.code}\nstdout: {self.out}\nstderr: {self.err}"


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = REQUEST_TIMEOUT,
) -> HttpReply:
    """One plain HTTP request; error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=body, headers=dict(headers or {}), method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpReply(int(response.status), bytes(response.read()))
    except urllib.error.HTTPError as exc:
        with exc:
            return HttpReply(int(exc.code), bytes(exc.read()))


class ControlPlaneProcess:
    """`meshctl control-plane` on a data dir, started (and restarted) inside `group`."""

    def __init__(self, group: procs.ProcessGroup, root: Path, *, data_dir: Path | None = None) -> None:
        self.group = group
        self.root = root
        self.data_dir = data_dir if data_dir is not None else root / "data"
        self.proc: procs.ManagedProcess | None = None
        self.ready: dict[str, Any] = {}
        self.starts = 0
        self._tokens: dict[str, str] = {}

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(
        self,
        *,
        grpc_listen: str = "127.0.0.1:0",
        http_listen: str = "127.0.0.1:0",
        warmup_ms: int | None = None,
        debounce_ms: int | None = None,
        timeout: float = READY_TIMEOUT,
        extra_args: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Start the process and wait for its ready file; returns {"grpc", "http", "pid"}. Fails if
        the process exits first (see `start_retrying` for a port that may be briefly taken)."""
        self.starts += 1
        ready_file = self.root / f"control-plane-{self.starts}.json"
        argv = procs.python_argv(
            "-m", "meshctl", "control-plane", "--data-dir", str(self.data_dir),
            "--grpc-listen", grpc_listen, "--http-listen", http_listen, "--ready-file", str(ready_file),
        )  # fmt: skip
        if warmup_ms is not None:
            argv += ["--warmup-ms", str(warmup_ms)]
        if debounce_ms is not None:
            argv += ["--debounce-ms", str(debounce_ms)]
        argv += list(extra_args)
        proc = self.group.start(f"control-plane-{self.starts}", argv, ready_file, env=child_env(), cwd=REPO)
        self.proc = proc
        try:
            self.ready = proc.wait_ready(timeout)
        except procs.ProcessExitedError:
            self.group.stop(proc)  # reaps it; the caller decides whether to try again
            self.proc = None
            raise
        assert self.ready["pid"] == proc.pid, self.ready
        return self.ready

    def start_retrying(self, deadline: float, **options: Any) -> dict[str, Any]:
        """`start`, again and again while the process exits before it is ready (a port of the
        previous instance not free yet), until the monotonic `deadline`."""
        while True:
            try:
                return self.start(timeout=max(deadline - time.monotonic(), 1.0), **options)
            except procs.ProcessExitedError as exc:
                if time.monotonic() >= deadline:
                    raise AssertionError(f"the control plane did not start in time: {exc}") from None
                time.sleep(procs.POLL_INTERVAL)

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the process (a crash, no clean-up of any kind) and wait until it is gone."""
        proc = self.proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        wait_for(proc.has_exited, timeout, "the control plane to die")
        assert self.group.stop(proc) == -signal.SIGKILL
        self.proc = None

    # -- addresses ----------------------------------------------------------------------------------

    @property
    def grpc(self) -> str:
        return str(self.ready["grpc"])

    @property
    def http(self) -> str:
        return str(self.ready["http"])

    @property
    def url(self) -> str:
        return f"http://{self.http}"

    # -- clients ------------------------------------------------------------------------------------

    def token(self, role: str = "admin") -> str:
        """A bearer token of `role` from `meshctl token create` (minted once per role)."""
        return self._minted(role, "--role", role)

    def join_token(self, service: str, namespace: str = NAMESPACE) -> str:
        """A join token for `service` from `meshctl token create --service` (minted once each)."""
        return self._minted(f"join:{namespace}/{service}", "--service", service, "--namespace", namespace)

    def _minted(self, key: str, *argv: str) -> str:
        """`meshctl token create ARGV` on this control plane's data dir, run once per key."""
        if key not in self._tokens:
            done = subprocess.run(
                procs.python_argv(
                    "-m", "meshctl", "token", "create", *argv, "--data-dir", str(self.data_dir)
                ),
                capture_output=True,
                text=True,
                env=dict(os.environ, **child_env()),
                cwd=REPO,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            self._tokens[key] = done.stdout.strip()
        return self._tokens[key]

    def meshctl(self, *argv: str, stdin: str = "", token: str | None = None) -> Completed:
        """Run `python -m meshctl ARGV` against this control plane, as an operator would."""
        env = dict(os.environ, **child_env())
        env["MESHCTL_SERVER"] = self.url
        env["MESHCTL_TOKEN"] = self.token() if token is None else token
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
        return Completed(tuple(argv), done.returncode, done.stdout, done.stderr)

    def ok(self, *argv: str, stdin: str = "") -> str:
        result = self.meshctl(*argv, stdin=stdin)
        assert result.code == 0, str(result)
        return result.out

    def ok_all(self, *argvs: Sequence[str]) -> list[str]:
        """`ok` for several commands run side by side (each is a process start); outputs in order."""
        with ThreadPoolExecutor(max_workers=len(argvs)) as pool:
            return list(pool.map(lambda argv: self.ok(*argv), argvs))

    def rest(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        content_type: str = "application/json",
        token: str | None = None,
    ) -> HttpReply:
        headers = {"Authorization": f"Bearer {self.token() if token is None else token}"}
        if body is not None:
            headers["Content-Type"] = content_type
        return http_request(self.url + path, method=method, body=body, headers=headers)

    def sidecars(self) -> dict[str, Any]:
        """GET /api/v1/sidecars (cheap enough to poll; `meshctl status` is for the final look)."""
        reply = self.rest("GET", "/api/v1/sidecars")
        assert reply.status == 200, reply
        listing: dict[str, Any] = reply.json()
        return listing

    def store_revision(self) -> int:
        return int(self.sidecars().get("storeRevision", 0))

    def status_json(self) -> dict[str, Any]:
        status: dict[str, Any] = json.loads(self.ok("status", "-o", "json"))
        return status

    def wait_until_all_applied(self, count: int, timeout: float, revision: int | None = None) -> int:
        """Poll until exactly `count` sidecars are connected, all in state ACK on `revision` (default:
        the store's current revision); returns that revision."""
        seen: dict[str, Any] = {}

        def done() -> bool:
            nonlocal seen
            seen = self.sidecars()
            target = int(seen.get("storeRevision", 0)) if revision is None else revision
            sidecars = [s for s in seen.get("sidecars", []) if s.get("connected")]
            return len(sidecars) == count and all(
                s.get("state") == "ACK" and int(s.get("appliedRevision", 0)) == target for s in sidecars
            )

        try:
            wait_for(done, timeout, f"{count} sidecars connected and ACK on revision {revision or 'current'}")
        except AssertionError as exc:
            exc.add_note(json.dumps(seen, indent=1))
            raise
        return int(seen.get("storeRevision", 0)) if revision is None else revision


# -- sidecars ---------------------------------------------------------------------------------------


@dataclass
class SidecarSpec:
    """One sidecar to start: client-only (outbound + admin) unless `app_kind` gives it a local app
    ("echo": tests.support.echo_server; "users": services.users at the version of its `version`
    label) behind an inbound listener. `extra_config` is added to its config file as it is."""

    service: str
    labels: dict[str, str] = field(default_factory=lambda: {"version": "v1"})
    dependencies: Sequence[str] = ()
    app_kind: str | None = None
    extra_config: Mapping[str, Any] = field(default_factory=dict)  # more sidecar config fields


@dataclass
class RunningSidecar:
    spec: SidecarSpec
    proc: procs.ManagedProcess
    ready: dict[str, Any]
    app: procs.ManagedProcess | None = None

    @property
    def name(self) -> str:
        return self.proc.name

    @property
    def admin(self) -> str:
        return str(self.ready["admin"])

    @property
    def outbound(self) -> str:
        return str(self.ready["outbound"])

    @property
    def inbound(self) -> str:
        return str(self.ready["inbound"])

    def config_dump(self) -> dict[str, Any]:
        status, body = http_get(self.admin, "/config_dump")
        assert status == 200, body
        dump: dict[str, Any] = json.loads(body)
        return dump


_APP_SERVICES = {"echo": ["test.Echo"], "users": ["demo.v1.Users"]}


def start_sidecars(
    group: procs.ProcessGroup,
    root: Path,
    ca: CertificateAuthority | Callable[[str], str],
    control_plane: str,
    specs: Iterable[SidecarSpec],
    *,
    timeout: float = READY_TIMEOUT,
) -> list[RunningSidecar]:
    """Start every app, then every sidecar, launching all before waiting for any; returns once each
    has written its ready file (a sidecar is connected to the control plane soon after, and ready
    on /ready once its first snapshot is applied). With a CA, each sidecar gets certificate files
    it issued; with a function (service → join token, e.g. ControlPlaneProcess.join_token), each
    gets a join token file and its certificates from the control plane's CA."""
    specs = list(specs)
    env = child_env()
    now = datetime.now(UTC)
    names = [f"sidecar-{i:02d}-{spec.service}" for i, spec in enumerate(specs)]
    apps: dict[str, procs.ManagedProcess] = {}
    for name, spec in zip(names, specs, strict=True):
        if spec.app_kind is not None:
            assert spec.app_kind in _APP_SERVICES, spec.app_kind
            ready = root / f"app-{name}.json"
            if spec.app_kind == "users":
                version = spec.labels.get("version", "v1")
                argv = procs.python_argv(
                    "-m", "services.users", "--version", version, "--ready-file", str(ready)
                )
            else:
                argv = procs.python_argv("-m", "tests.support.echo_server", "--ready-file", str(ready))
            apps[name] = group.start(f"app-{name}", argv, ready, env=env, cwd=REPO)
    app_addresses = {name: str(app.wait_ready(timeout)["address"]) for name, app in apps.items()}
    started: list[tuple[SidecarSpec, procs.ManagedProcess]] = []
    for name, spec in zip(names, specs, strict=True):
        config: dict[str, Any] = {
            "service": spec.service,
            "namespace": NAMESPACE,
            "labels": dict(spec.labels),
            "control_plane": control_plane,
            "drain_seconds": 1.0,
        }
        if isinstance(ca, CertificateAuthority):
            identity = SpiffeId(TRUST_DOMAIN, NAMESPACE, spec.service)
            tls = issue_workload_files(ca, identity, root / "certs" / name, now=now)
            config["tls"] = {"cert": str(tls.cert), "key": str(tls.key), "ca": str(tls.ca)}
        else:
            token_file = root / f"{name}.token"
            token_file.write_text(ca(spec.service) + "\n")
            config["join_token"] = {"file": str(token_file)}
        if spec.app_kind is None:
            config["listeners"] = {"outbound": "127.0.0.1:0", "admin": "127.0.0.1:0"}
        else:
            config["listeners"] = {"inbound": "127.0.0.1:0", "admin": "127.0.0.1:0"}
            config["app"] = app_addresses[name]
            config["grpc_services"] = _APP_SERVICES[spec.app_kind]
        if spec.dependencies:
            config["dependencies"] = list(spec.dependencies)
        config.update(spec.extra_config)
        config_file = root / f"{name}.yaml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        ready = root / f"{name}.json"
        argv = procs.python_argv(
            "-m", "meshctl", "sidecar", "--config", str(config_file), "--ready-file", str(ready)
        )
        started.append((spec, group.start(name, argv, ready, env=env, cwd=REPO)))
    return [
        RunningSidecar(spec, proc, proc.wait_ready(timeout), apps.get(proc.name)) for spec, proc in started
    ]


def wait_all_ready(sidecars: Sequence[RunningSidecar], timeout: float) -> None:
    """Poll every sidecar's /ready until each has applied its first snapshot."""
    pending = list(sidecars)

    def all_ready() -> bool:
        pending[:] = [s for s in pending if http_get(s.admin, "/ready")[0] != 200]
        return not pending

    wait_for(all_ready, timeout, "every sidecar to apply its first snapshot")


def wait_for_endpoints(sidecar: RunningSidecar, service: str, timeout: float, count: int = 1) -> None:
    """Poll a sidecar's /config_dump until it knows `count` endpoints of `service` (an app counts as
    an endpoint once its health check says it serves)."""

    def known() -> bool:
        services = sidecar.config_dump()["config"]["services"]
        return len(services.get(service, {}).get("endpoints", [])) >= count

    wait_for(known, timeout, f"{sidecar.name} to learn {count} endpoint(s) of {service}")


def policy_spec(dump: Mapping[str, Any], kind: str, name: str) -> Any:
    """The spec of the pushed policy `kind`/`name` in a sidecar's /config_dump (None: absent)."""
    for policy in dump.get("policies", []):
        if policy.get("kind") == kind and policy.get("name") == name:
            return policy.get("spec")
    return None


def logs_note(root: Path) -> str:
    return "\n".join(
        f"--- {log.name} ---\n{procs.log_tail(log)}" for log in sorted((root / "logs").glob("*.log"))
    )


def check_exit_codes(codes: Mapping[str, int], killed: Callable[[str], bool] = lambda name: False) -> None:
    unclean = {name: code for name, code in codes.items() if code != 0 and not killed(name)}
    assert not unclean, f"processes did not exit 0 on SIGTERM: {unclean}"
