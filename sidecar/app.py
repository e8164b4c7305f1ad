"""A running sidecar: listeners, upstream pools, the current snapshot and the admin port."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from mesh.v1.discovery_pb2 import IdentityProof

from control_plane.pki import SigningKey
from sidecar import tls
from sidecar.access_log import AccessLog
from sidecar.admin import AdminViews, build_admin_app
from sidecar.authz import NO_AUTHZ, Authz
from sidecar.call import Handler
from sidecar.certs import CertInfo, IssuedCertInfo
from sidecar.chain import build_inbound, build_outbound
from sidecar.clusters import ClusterStates
from sidecar.config import Address, Policy, SidecarConfig
from sidecar.h2.connection import H2Connection
from sidecar.h2.stream import Limits
from sidecar.health_check import HealthCheckers
from sidecar.jwks import JwksStore
from sidecar.jwt_authn import NO_JWT_AUTHN, JwtAuthn
from sidecar.listener import InboundListener
from sidecar.metrics import SidecarMetrics
from sidecar.peer_authentication import DEFAULT_PEER_AUTHN, PeerAuthn
from sidecar.pool import Pools
from sidecar.ratelimit import NO_LIMITS, RateLimitCollector, RateLimiter, RateLimits, compile_ratelimits
from sidecar.relay import Relay
from sidecar.retry import Destinations
from sidecar.stats import Stats
from sidecar.tasks import cancel_all
from sidecar.tracing import Tracer, tracer_from_env
from sidecar.traffic import NO_TRAFFIC, Traffic

if TYPE_CHECKING:
    from sidecar.app_health import AppHealthWatcher
    from sidecar.discovery import Backoff, Discovered, DiscoveryClient
    from sidecar.identity import WorkloadIdentity

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a call needs to be decided, swapped atomically as one object."""

    version: str
    config: SidecarConfig  # with a control plane, `services` are the pushed ones
    outbound: Handler | None
    inbound: Handler | None
    policies: tuple[Policy, ...] = ()  # pushed by the control plane (static mode has none)
    store_revision: int = 0
    traffic: Traffic = NO_TRAFFIC  # the routing policies among them, compiled
    authz: Authz = NO_AUTHZ  # the AuthorizationPolicies among them, compiled
    ratelimits: RateLimits = NO_LIMITS  # the RateLimitPolicies among them, compiled
    peer_authn: PeerAuthn = DEFAULT_PEER_AUTHN  # the inbound listener's mTLS mode (STRICT by default)
    jwt_authn: JwtAuthn = NO_JWT_AUTHN  # the RequestAuthentications among them, compiled


def _jsonable(value: Any) -> Any:
    if isinstance(value, Address | Path):  # before the dataclass case: an address reads as host:port
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


class Sidecar:
    """Static mode serves `config` as it is. With `config.control_plane`, the services and
    policies come from the control plane's snapshots (see sidecar.discovery): the sidecar is
    ready once the first one is applied, and keeps its last good one while the control plane is
    away. `node_id` names this sidecar to the control plane (default: service-host-pid);
    `backoff` paces its reconnects (default: 0.1 s doubling to 2 s, ±20%); `rand` draws weighted
    routes and random load balancing (default: seeded from os.urandom)."""

    def __init__(
        self,
        config: SidecarConfig,
        *,
        node_id: str | None = None,
        backoff: Backoff | None = None,
        rand: random.Random | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.config = config
        # OpenTelemetry, as the OTEL_* variables say (TracingConfigError when they are unusable)
        self.tracer = tracer if tracer is not None else tracer_from_env(config.service)
        self.random = rand if rand is not None else random.Random()
        self.stats = Stats()
        self.limits = Limits(
            max_concurrent_streams=config.max_concurrent_streams, max_message_bytes=config.max_message_bytes
        )
        client_ssl = None
        self._server_ssl: tls.SwappableServerContext | None = None
        if config.tls is not None:
            client_ssl = tls.client_context(config.tls.cert, config.tls.key, config.tls.ca)
            server_ssl = tls.server_context(config.tls.cert, config.tls.key, config.tls.ca)
            self._server_ssl = tls.SwappableServerContext(server_ssl)
        self.pools = Pools(self.limits, client_ssl)
        # Outlier, breaker and connection-pool state per destination cluster, across snapshots.
        self.health_checkers = HealthCheckers(self.pools)
        self.cluster_states = ClusterStates(rand=self.random, checkers=self.health_checkers)
        self._cluster_timer: asyncio.Task[None] | None = None
        self.jwks = JwksStore()  # the JWKS the RequestAuthentications name, kept fresh off the call path
        self.identity = ""
        self.node_id = node_id or ""
        # With a join token, the certificate comes from the control plane's CA (at start()).
        self.workload: WorkloadIdentity | None = None
        self._file_identity: tuple[bytes, SigningKey] | None = None  # (chain PEM, key) from tls files
        self._reported_serial = 0
        if config.control_plane is not None:
            from sidecar.discovery import default_node_id, identity_of

            if config.join_token is not None:
                from sidecar.identity import WorkloadIdentity

                token = config.join_token.read(os.environ)  # ConfigError: none there
                self.workload = WorkloadIdentity(
                    str(config.control_plane), token, self._rotate, rand=self.random
                )
            else:
                assert config.tls is not None  # the config requires one or the other
                self.identity = identity_of(config.tls.cert)  # ValueError: no usable SPIFFE ID
                self._file_identity = _load_file_identity(config.tls.cert, config.tls.key)
            self.node_id = node_id or default_node_id(config.service)
        self.limiter = _limiter(config, self.stats)  # its buckets outlive snapshots
        # Static mode starts on its file; with a control plane, on nothing until the first push.
        version = "static-1" if config.control_plane is None else ""
        static_limits = compile_ratelimits(config.rate_limits.policies)  # static mode's, if any
        self.snapshot = self._build_snapshot(version, config, ratelimits=static_limits)
        self.discovery: DiscoveryClient | None = None
        self.metrics = SidecarMetrics(
            workload=config.service,
            version=config.labels.get("version", ""),
            stats=self.stats,
            config_version=lambda: self.snapshot.version,
            services=lambda: self.snapshot.config.services,
            discovery=lambda: self.discovery,
            clusters=self.cluster_states,
            cert=self.workload.not_after
            if self.workload is not None
            else config.tls.cert
            if config.tls is not None
            else None,
        )
        self.metrics.registry.register(RateLimitCollector(self.limiter))
        self.stats.sections["rate_limits"] = lambda: self.limiter.status(self.snapshot.ratelimits)
        self.app_health: AppHealthWatcher | None = None
        self.access_log = AccessLog(config.access_log) if config.access_log is not None else None
        self.certs: CertInfo | IssuedCertInfo | None = None
        if self.workload is not None:
            self.certs = IssuedCertInfo(self.workload)
        elif config.tls is not None:
            self.certs = CertInfo(config.tls.cert, config.tls.ca)
        self._backoff = backoff
        self._servers: list[asyncio.Server | InboundListener] = []
        self._relays: list[Relay] = []
        self._admin: web.AppRunner | None = None
        self._admin_grpc: Any = None  # the grpc.aio server of the gRPC admin service
        self.addresses: dict[str, str] = {}
        self.draining = False
        self.listening = False

    @property
    def ready(self) -> bool:
        """Listening, not draining, and (with a control plane) on a pushed snapshot."""
        if not self.listening or self.draining:
            return False
        return self.config.control_plane is None or bool(self.snapshot.version)

    def _build_snapshot(
        self,
        version: str,
        config: SidecarConfig,
        policies: tuple[Policy, ...] = (),
        store_revision: int = 0,
        traffic: Traffic = NO_TRAFFIC,
        authz: Authz = NO_AUTHZ,
        ratelimits: RateLimits = NO_LIMITS,
        peer_authn: PeerAuthn = DEFAULT_PEER_AUTHN,
        jwt_authn: JwtAuthn = NO_JWT_AUTHN,
    ) -> Snapshot:
        outbound = None
        if config.outbound is not None:
            self.cluster_states.sync(
                (key, cluster.resilience, [ep.address for ep in cluster.endpoints])
                for key, cluster in traffic.clusters.items()
            )
            outbound = build_outbound(
                config, self.pools, traffic, self.random, self.cluster_states, self.stats
            )
        inbound = None
        if config.inbound is not None:
            inbound = build_inbound(
                config, self.pools, authz, self.stats, ratelimits, self.limiter, jwt_authn, self.jwks
            )
        return Snapshot(
            version,
            config,
            outbound,
            inbound,
            policies,
            store_revision,
            traffic,
            authz,
            ratelimits,
            peer_authn,
            jwt_authn,
        )

    def _rotate(self, server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext) -> None:
        """A new certificate or trust bundle from the CA: new connections, both ways, use it;
        connections already open finish their calls (the outbound ones drain)."""
        if self._server_ssl is None:
            self._server_ssl = tls.SwappableServerContext(server_ssl)
        else:
            self._server_ssl.swap(server_ssl)
        self.pools.renew(client_ssl)
        issued = self.workload.issued if self.workload is not None else None
        if issued is not None and issued.leaf.serial_number != self._reported_serial:
            self._reported_serial = issued.leaf.serial_number
            if self.discovery is not None:
                self.discovery.report_certificate()

    def _prove(self) -> IdentityProof | None:
        """Proof of this sidecar's identity for the control plane (its certificate and key)."""
        from sidecar.identity import identity_proof

        now = datetime.now(UTC)
        if self.workload is not None and self.workload.issued is not None:
            issued = self.workload.issued
            return identity_proof(issued.presented_pem, issued.key, self.node_id, now)
        if self._file_identity is not None:
            return identity_proof(*self._file_identity, self.node_id, now)
        return None

    def apply(self, discovered: Discovered) -> None:
        """Swap in a pushed snapshot (already validated): new chains over the new services.
        Calls in flight keep the handler they started with."""
        if self.workload is not None:
            self.workload.set_trust(discovered.trust_roots, discovered.signing_ca)
        current = self.snapshot
        if (
            current.version
            and discovered.services == current.config.services
            and (discovered.policies == current.policies)
        ):
            # Same content at a newer revision (or a reconnect): keep the chains, so round robin
            # and other per-chain state carry on.
            self.snapshot = dataclasses.replace(
                current, version=discovered.version, store_revision=discovered.store_revision
            )
            return
        config = dataclasses.replace(self.config, services=discovered.services)
        self.jwks.track(discovered.jwt_authn.uris)  # file:// sets are read now, URLs fetched soon
        self.snapshot = self._build_snapshot(
            discovered.version,
            config,
            discovered.policies,
            discovered.store_revision,
            discovered.traffic,
            discovered.authz,
            discovered.ratelimits,
            discovered.peer_authn,
            discovered.jwt_authn,
        )
        keep = {ep.address for entry in discovered.services.values() for ep in entry.endpoints}
        self.pools.retire_secure(keep)
        if current.peer_authn.plaintext_allowed and not discovered.peer_authn.plaintext_allowed:
            self._drain_plaintext()

    def _drain_plaintext(self) -> None:
        """PERMISSIVE → STRICT: GOAWAY every plaintext inbound connection. Its calls in flight
        finish; its client reconnects, and the listener now refuses plaintext."""
        for relay in self._relays:
            if relay.direction == "inbound":
                for conn in list(relay.connections):
                    if _plaintext(conn):
                        conn.drain()

    def _outbound(self) -> Handler:
        handler = self.snapshot.outbound
        assert handler is not None
        return handler

    def _inbound(self) -> Handler:
        handler = self.snapshot.inbound
        assert handler is not None
        return handler

    async def start(self) -> dict[str, str]:
        """Listen (after getting the first certificate from the CA, with a join token) and
        connect to the control plane. Raises OSError (cannot listen) or CertificateUnavailable."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        if self.workload is not None:
            await self.workload.bootstrap()
            self.identity = self.workload.spiffe_id
            self.workload.start()
        if cfg.outbound is not None:
            relay = Relay(
                "outbound",
                self._outbound,
                limits=self.limits,
                stats=self.stats,
                secure=False,
                metrics=self.metrics.calls,
                access_log=self.access_log,
                source=cfg.service,
                destinations=Destinations(cfg.retries),
                rand=self.random,
                tracer=self.tracer,
            )
            server = await loop.create_server(
                relay.protocol, cfg.outbound.host, cfg.outbound.port, reuse_address=True
            )
            self._add(relay, server, "outbound")
            self._cluster_timer = loop.create_task(self.cluster_states.run(), name="outlier-sweeps")
            self.health_checkers.start()
        if cfg.inbound is not None:
            relay = Relay(
                "inbound",
                self._inbound,
                limits=self.limits,
                stats=self.stats,
                secure=True,
                metrics=self.metrics.calls,
                access_log=self.access_log,
                tracer=self.tracer,
            )
            server_ssl = self._server_ssl
            assert server_ssl is not None  # the config requires certificates with an inbound listener
            listener = InboundListener(
                relay.protocol,
                lambda: server_ssl.current,  # each handshake: the certificate in force (rotation)
                lambda: self.snapshot.peer_authn.plaintext_allowed,
                self.stats,
            )
            await listener.start(cfg.inbound.host, cfg.inbound.port)
            self._add(relay, listener, "inbound")
        views = self.admin_views()
        self._admin = web.AppRunner(build_admin_app(views), access_log=None)
        await self._admin.setup()
        site = web.TCPSite(self._admin, cfg.admin.host, cfg.admin.port, reuse_address=True)
        await site.start()
        self.addresses["admin"] = _bound(site._server)
        if cfg.admin_grpc is not None:
            from sidecar.admin_grpc import start_admin_server

            self._admin_grpc, self.addresses["admin_grpc"] = await start_admin_server(views, cfg.admin_grpc)
        self.listening = True
        if cfg.control_plane is not None:
            self._start_discovery(cfg.control_plane)
        return dict(self.addresses)

    def _start_discovery(self, control_plane: Address) -> None:
        from sidecar.discovery import DiscoveryClient, hello_for

        hello = hello_for(self.config, self.addresses, identity=self.identity, node_id=self.node_id)
        apply = self.metrics.counting(self.apply)
        self.discovery = DiscoveryClient(
            str(control_plane), hello, apply, backoff=self._backoff, prove=self._prove
        )
        self.discovery.start()
        if self.config.inbound is not None and self.config.app is not None:
            from sidecar.app_health import AppHealthWatcher

            # Its endpoint is only an endpoint while the app says it serves (grpc.health.v1).
            self.app_health = AppHealthWatcher(self.config.app, self.discovery.report_health)
            self.app_health.start()

    def _add(self, relay: Relay, server: asyncio.Server | InboundListener, name: str) -> None:
        self._relays.append(relay)
        self._servers.append(server)
        self.addresses[name] = _bound(server)

    def config_dump(self) -> dict[str, object]:
        snap = self.snapshot
        dump: dict[str, object] = {
            "version": snap.version,
            "config": _jsonable(snap.config),
            "listeners": dict(self.addresses),
            "draining": self.draining,
        }
        if self.config.inbound is not None:
            dump["peer_authentication"] = _jsonable(snap.peer_authn)
            dump["jwks"] = {
                uri: {"keys": self.jwks.get(uri) is not None, "error": self.jwks.errors.get(uri)}
                for uri in sorted(snap.jwt_authn.uris)
            }
        if self.config.control_plane is not None:
            dump["store_revision"] = snap.store_revision
            dump["policies"] = _jsonable(snap.policies)
            dump["identity"] = self.identity
            dump["discovery"] = self.discovery.status() if self.discovery is not None else None
            dump["app_serving"] = self.app_health.serving if self.app_health is not None else None
        return dump

    async def stop(self, drain_seconds: float | None = None) -> None:
        """Stop accepting, let calls in flight finish (bounded), then close everything."""
        timeout = self.config.drain_seconds if drain_seconds is None else drain_seconds
        self.draining = True
        if self.app_health is not None:
            await self.app_health.stop()
        if self.discovery is not None:
            # Not serving any more, so the other sidecars stop sending calls here; the last
            # snapshot stays in force for the calls still draining.
            await self.discovery.stop()
        for server in self._servers:
            server.close()
        await asyncio.gather(*(relay.drain(timeout) for relay in self._relays))
        await self.health_checkers.stop()
        await cancel_all([self._cluster_timer])
        if self.workload is not None:
            await self.workload.stop()
        await self.pools.close()
        await self.limiter.close()
        await self.jwks.close()
        for server in self._servers:
            await server.wait_closed()
        if self._admin is not None:
            await self._admin.cleanup()
        if self._admin_grpc is not None:
            await self._admin_grpc.stop(None)
        if self.access_log is not None:
            self.access_log.close()
        if self.tracer is not None:
            await self.tracer.shutdown()

    def admin_views(self) -> AdminViews:
        """What the admin HTTP port and the gRPC admin service show."""
        return AdminViews(
            is_ready=lambda: self.ready,
            config_dump=self.config_dump,
            stats=self.stats.as_json,
            metrics=self.metrics.exposition,
            clusters=self.clusters,
            destinations=self.cluster_states.as_json,
            certs=self.certs.as_json if self.certs is not None else None,
        )

    def clusters(self) -> list[dict[str, object]]:
        """Every upstream pool: its address, the services it serves in the snapshot in force
        (with the endpoint's labels), its connections, the streams open or waiting on it, and
        the clusters that have ejected it or found it unhealthy."""
        config = self.snapshot.config
        serving: dict[Address, list[tuple[str, dict[str, str]]]] = {}
        for name, entry in config.services.items():
            for ep in entry.endpoints:
                serving.setdefault(ep.address, []).append((name, dict(ep.labels)))
        out: list[dict[str, object]] = []
        for pool in self.pools.all():
            services = serving.get(pool.address, [])
            labels: dict[str, str] = {}
            for _, ep_labels in services:
                labels.update(ep_labels)
            names = [name for name, _ in services]
            if not names and pool.ssl_context is None and pool.address == config.app:
                names = [config.service]  # the local app, behind the inbound listener
            out.append(
                {
                    "address": str(pool.address),
                    "secure": pool.ssl_context is not None,
                    "expected_identity": pool.expected_identity,
                    "identity_mismatches": pool.identity_mismatches,
                    "services": names,
                    "labels": labels,
                    "connections": len(pool.connections),
                    "in_flight": pool.in_flight(),
                }
            )
        ejected: dict[str, list[str]] = {}
        unhealthy: dict[str, list[str]] = {}
        for state in self.cluster_states.states.values():
            name = state.service if state.key[1] is None else f"{state.service}/{state.key[1]}"
            for address in state.ejected():
                ejected.setdefault(address, []).append(name)
            for address in state.unhealthy():
                unhealthy.setdefault(address, []).append(name)
        for pool_entry in out:
            address = str(pool_entry["address"])
            pool_entry["ejected_from"] = sorted(ejected.get(address, []))  # by outlier detection
            pool_entry["unhealthy_in"] = sorted(unhealthy.get(address, []))  # by health checks
        out.sort(key=lambda c: str(c["address"]))
        return out


def _limiter(config: SidecarConfig, stats: Stats) -> RateLimiter:
    settings = config.rate_limits
    shared = None
    if settings.redis is not None:
        from sidecar.ratelimit_redis import RedisBuckets

        shared = RedisBuckets(settings.redis, timeout=settings.timeout_seconds)
    return RateLimiter(
        stats,
        shared,
        key_prefix=f"{config.namespace}/{config.service}",
        retry_seconds=settings.retry_seconds,
    )


def _plaintext(conn: H2Connection) -> bool:
    transport = conn.transport
    return transport is not None and transport.get_extra_info("ssl_object") is None


def _load_file_identity(cert: Path, key: Path) -> tuple[bytes, SigningKey] | None:
    """The certificate chain and key of tls files, to prove the identity to the control plane;
    None when the key is not one that can sign a proof."""
    try:
        loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
        chain = cert.read_bytes()
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        return None
    return chain, loaded


def _bound(server: Any) -> str:
    host, port = server.sockets[0].getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
