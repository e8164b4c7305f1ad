"""A running sidecar: listeners, upstream pools, the current snapshot and the admin port."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from sidecar import tls
from sidecar.call import Handler
from sidecar.chain import build_inbound, build_outbound
from sidecar.config import Address, SidecarConfig
from sidecar.h2.stream import Limits
from sidecar.pool import Pools
from sidecar.relay import Relay
from sidecar.stats import Stats

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a call needs to be decided, swapped atomically as one object."""

    version: str
    config: SidecarConfig
    outbound: Handler | None
    inbound: Handler | None


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Address | Path):
        return str(value)
    return value


class Sidecar:
    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.limits = Limits(
            max_concurrent_streams=config.max_concurrent_streams, max_message_bytes=config.max_message_bytes
        )
        client_ssl = server_ssl = None
        if config.tls is not None:
            client_ssl = tls.client_context(config.tls.cert, config.tls.key, config.tls.ca)
            server_ssl = tls.server_context(config.tls.cert, config.tls.key, config.tls.ca)
        self._server_ssl = server_ssl
        self.pools = Pools(self.limits, client_ssl)
        self.snapshot = self._build_snapshot("static-1", config)
        self._servers: list[asyncio.Server] = []
        self._relays: list[Relay] = []
        self._admin: web.AppRunner | None = None
        self.addresses: dict[str, str] = {}
        self.draining = False
        self.ready = False

    def _build_snapshot(self, version: str, config: SidecarConfig) -> Snapshot:
        outbound = build_outbound(config, self.pools) if config.outbound is not None else None
        inbound = build_inbound(config, self.pools) if config.inbound is not None else None
        return Snapshot(version, config, outbound, inbound)

    def _outbound(self) -> Handler:
        handler = self.snapshot.outbound
        assert handler is not None
        return handler

    def _inbound(self) -> Handler:
        handler = self.snapshot.inbound
        assert handler is not None
        return handler

    async def start(self) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        cfg = self.config
        if cfg.outbound is not None:
            relay = Relay("outbound", self._outbound, limits=self.limits, stats=self.stats, secure=False)
            server = await loop.create_server(
                relay.protocol, cfg.outbound.host, cfg.outbound.port, reuse_address=True
            )
            self._add(relay, server, "outbound")
        if cfg.inbound is not None:
            relay = Relay("inbound", self._inbound, limits=self.limits, stats=self.stats, secure=True)
            server = await loop.create_server(
                relay.protocol, cfg.inbound.host, cfg.inbound.port, ssl=self._server_ssl, reuse_address=True
            )
            self._add(relay, server, "inbound")
        app = build_admin_app_for(self)
        self._admin = web.AppRunner(app, access_log=None)
        await self._admin.setup()
        site = web.TCPSite(self._admin, cfg.admin.host, cfg.admin.port, reuse_address=True)
        await site.start()
        self.addresses["admin"] = _bound(site._server)
        self.ready = True
        return dict(self.addresses)

    def _add(self, relay: Relay, server: asyncio.Server, name: str) -> None:
        self._relays.append(relay)
        self._servers.append(server)
        self.addresses[name] = _bound(server)

    def config_dump(self) -> dict[str, object]:
        snap = self.snapshot
        return {
            "version": snap.version,
            "config": _jsonable(snap.config),
            "listeners": dict(self.addresses),
            "draining": self.draining,
        }

    async def stop(self, drain_seconds: float | None = None) -> None:
        """Stop accepting, let calls in flight finish (bounded), then close everything."""
        timeout = self.config.drain_seconds if drain_seconds is None else drain_seconds
        self.draining = True
        self.ready = False
        for server in self._servers:
            server.close()
        await asyncio.gather(*(relay.drain(timeout) for relay in self._relays))
        await self.pools.close()
        for server in self._servers:
            await server.wait_closed()
        if self._admin is not None:
            await self._admin.cleanup()


def _bound(server: Any) -> str:
    host, port = server.sockets[0].getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def build_admin_app_for(sidecar: Sidecar) -> web.Application:
    from sidecar.admin import build_admin_app

    return build_admin_app(
        is_ready=lambda: sidecar.ready, config_dump=sidecar.config_dump, stats=sidecar.stats
    )
