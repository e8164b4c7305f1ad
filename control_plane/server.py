"""The control plane as one process: the store, the registry, discovery, the CA and the policy API.

One gRPC server carries mesh.v1.DiscoveryService (sidecars' config streams),
mesh.v1.CertificateService (the CA: CSRs from sidecars), mesh.v1.PolicyService
(bearer-token authenticated), grpc.health.v1 and server reflection (so ``grpcurl list`` works);
one aiohttp server carries the REST API and the Prometheus metrics (``/metrics``). Both run on the
process's asyncio loop.

Data dir: the store (``SqliteStore``), the API signing key (created on first start) and, unless
another CA directory is given, the mesh CA in ``ca/`` (a root created on first start). The CA
directory is looked at every ``ca_poll`` seconds; a change there (a root rotation) is pushed to
every sidecar with the trust bundle (control_plane.ca_source).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from mesh.v1 import discovery_pb2, discovery_pb2_grpc

from control_plane import ca_service, grpc_api, rest
from control_plane.auth import Clock, TokenVerifier, load_or_create_signing_key, utc_now
from control_plane.ca import DEFAULT_LEAF_TTL, CAError
from control_plane.ca_source import CaDirectory
from control_plane.discovery import DEFAULT_DEBOUNCE, DEFAULT_WARMUP, DiscoveryServicer, ServerKeepalive
from control_plane.discovery_auth import DiscoveryAuthenticator
from control_plane.metrics import ControlPlaneMetrics
from control_plane.policy_service import PolicyService
from control_plane.sqlite_store import STORE_FILE, SqliteStore

log = logging.getLogger(__name__)

DEFAULT_GRPC_LISTEN = "127.0.0.1:15010"
DEFAULT_HTTP_LISTEN = "127.0.0.1:15011"
DISCOVERY_SERVICE: str = discovery_pb2.DESCRIPTOR.services_by_name["DiscoveryService"].full_name
DEFAULT_TRUST_DOMAIN = "cluster.local"
CA_SUBDIR = "ca"
DEFAULT_CA_POLL = 2.0


class StartError(Exception):
    """The control plane could not start (a port in use, an unreadable data dir...)."""


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise StartError(f"expected host:port, got {listen!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def join_listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Addresses:
    grpc: str
    http: str


class ControlPlane:
    def __init__(
        self,
        data_dir: Path,
        *,
        grpc_listen: str = DEFAULT_GRPC_LISTEN,
        http_listen: str = DEFAULT_HTTP_LISTEN,
        debounce: float = DEFAULT_DEBOUNCE,
        warmup: float = DEFAULT_WARMUP,
        max_body_bytes: int = rest.MAX_BODY_BYTES,
        keepalive: ServerKeepalive | None = None,
        clock: Clock = utc_now,
        ca_dir: Path | None = None,
        trust_domain: str | None = None,
        cert_ttl: timedelta = DEFAULT_LEAF_TTL,
        ca_poll: float = DEFAULT_CA_POLL,
        require_identity: bool = False,
    ) -> None:
        self._require_identity = require_identity
        self.data_dir = data_dir
        self._ca_dir = ca_dir
        self._trust_domain = trust_domain
        self._cert_ttl = cert_ttl
        self._ca_poll = ca_poll
        self.ca: CaDirectory | None = None
        self.issuer: ca_service.Issuer | None = None
        self._ca_task: asyncio.Task[None] | None = None
        self._grpc_listen = grpc_listen
        self._http_listen = http_listen
        self._debounce = debounce
        self._warmup = warmup
        self._max_body = max_body_bytes
        self._keepalive = keepalive if keepalive is not None else ServerKeepalive()
        self._clock = clock
        self._cleanups: list[Callable[[], Any]] = []
        self._grpc: Any = None
        self._health: Any = None
        self._runner: web.AppRunner | None = None
        self.discovery: DiscoveryServicer | None = None

    async def start(self) -> Addresses:
        """Open the store, bind both servers and start serving. Raises StartError."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            key = load_or_create_signing_key(self.data_dir)
            store = SqliteStore(self.data_dir / STORE_FILE)
        except Exception as exc:
            raise StartError(f"cannot open data dir {self.data_dir}: {exc}") from exc
        self._cleanups.append(store.close)
        ca = self._open_ca()
        trust_domain = self._trust_domain or ca.trust.authority.trust_domain or DEFAULT_TRUST_DOMAIN
        ca_domain = ca.trust.authority.trust_domain
        if ca_domain is not None and ca_domain != trust_domain:
            raise StartError(
                f"the CA in {ca.directory} is for trust domain {ca_domain!r}, not {trust_domain!r}"
            )
        authenticator = DiscoveryAuthenticator(lambda: ca.trust, trust_domain, self._clock)
        discovery = DiscoveryServicer(
            store,
            debounce=self._debounce,
            warmup=self._warmup,
            authenticator=authenticator,
            require_identity=self._require_identity,
        )
        discovery.builder.set_trust(ca.trust)
        self.discovery = discovery
        verifier = TokenVerifier(key.public_key(), clock=self._clock)
        issuer = ca_service.Issuer(
            lambda: ca.trust, verifier, trust_domain=trust_domain, ttl=self._cert_ttl, clock=self._clock
        )
        self.issuer = issuer
        service = PolicyService(
            store, registry=discovery.registry, notify=discovery.notify_changed, clock=self._clock
        )

        server = grpc.aio.server(
            interceptors=[grpc_api.AuthInterceptor(verifier)],
            options=[
                # Without SO_REUSEPORT a second control plane on a taken port fails instead of sharing it.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", self._max_body),
                # Keepalive both ways on the sidecars' discovery streams: a sidecar that vanished
                # without closing its connection is noticed, and the sidecars' own pings are allowed.
                *self._keepalive.server_options(),
            ],
        )
        self._grpc = server
        discovery_pb2_grpc.add_DiscoveryServiceServicer_to_server(discovery, server)
        grpc_api.add_to_server(service, server)
        ca_service.add_to_server(issuer, server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [
                grpc_api.SERVICE_NAME,
                DISCOVERY_SERVICE,
                ca_service.SERVICE_NAME,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        split_listen(self._grpc_listen)
        try:
            port = server.add_insecure_port(self._grpc_listen)
        except RuntimeError as exc:
            raise StartError(f"gRPC: cannot listen on {self._grpc_listen}: {exc}") from None
        if port == 0:
            raise StartError(f"gRPC: cannot listen on {self._grpc_listen}")
        grpc_address = join_listen(split_listen(self._grpc_listen)[0], port)

        app = rest.create_app(service, verifier, max_body_bytes=self._max_body)
        metrics = ControlPlaneMetrics(discovery, issuer)

        async def prometheus(_request: web.Request) -> web.Response:
            body, content_type = metrics.exposition()
            media_type, _sep, params = content_type.partition(";")
            charset = params.partition("charset=")[2].strip() or None
            return web.Response(body=body, content_type=media_type.strip(), charset=charset)

        app.router.add_get("/metrics", prometheus)  # no token, like /healthz
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, http_port = split_listen(self._http_listen)
        try:
            await web.TCPSite(self._runner, host, http_port, reuse_port=False).start()
        except OSError as exc:
            raise StartError(f"HTTP: cannot listen on {self._http_listen}: {exc.strerror}") from None
        bound = self._runner.addresses[0]
        http_address = join_listen(host, int(bound[1]))

        await server.start()
        discovery.start()
        self._ca_task = asyncio.get_running_loop().create_task(self._watch_ca(ca, discovery), name="ca-watch")
        for name in ("", grpc_api.SERVICE_NAME, DISCOVERY_SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return Addresses(grpc_address, http_address)

    def _open_ca(self) -> CaDirectory:
        directory = self._ca_dir if self._ca_dir is not None else self.data_dir / CA_SUBDIR
        create = None
        if self._ca_dir is None:  # the default home: a root CA is made there on first start
            create = self._trust_domain or DEFAULT_TRUST_DOMAIN
        try:
            ca = CaDirectory.open(directory, create_trust_domain=create, now=self._clock())
        except (CAError, OSError, ValueError) as exc:
            hint = "" if self._ca_dir is None else " (create one with `meshctl certs init --dir DIR`)"
            raise StartError(f"cannot load the CA from {directory}: {exc}{hint}") from None
        self.ca = ca
        return ca

    async def _watch_ca(self, ca: CaDirectory, discovery: DiscoveryServicer) -> None:
        while True:
            await asyncio.sleep(self._ca_poll)
            try:
                changed = await asyncio.to_thread(ca.refresh)
            except Exception:
                log.exception("checking the CA directory failed")
                continue
            if changed:
                discovery.builder.set_trust(ca.trust)
                discovery.notify_changed()

    async def stop(self, grace: float = 2.0) -> None:
        """Stop serving (calls in flight get `grace` seconds), then close the store. Idempotent."""
        if self._ca_task is not None:
            self._ca_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ca_task
            self._ca_task = None
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
            self._health = None
        if self.discovery is not None:
            await self.discovery.stop()
            self.discovery = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._grpc is not None:
            await self._grpc.stop(grace)
            self._grpc = None
        while self._cleanups:
            self._cleanups.pop()()


def write_ready_file(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


async def serve(control_plane: ControlPlane, *, ready_file: Path | None = None, grace: float = 2.0) -> int:
    """Run until SIGTERM or SIGINT, then stop gracefully. Returns the exit code."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        try:
            addresses = await control_plane.start()
        except StartError as exc:
            log.error("%s", exc)
            await control_plane.stop(0)
            return 1
        log.info(
            "control plane: gRPC on %s, HTTP on %s, data dir %s",
            addresses.grpc,
            addresses.http,
            control_plane.data_dir,
        )
        if ready_file is not None:
            write_ready_file(ready_file, {"grpc": addresses.grpc, "http": addresses.http, "pid": os.getpid()})
        await stopping.wait()
        log.info("control plane: stopping")
        await control_plane.stop(grace)
        return 0
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
