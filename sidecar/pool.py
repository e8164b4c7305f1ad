"""Pooled upstream HTTP/2 connections to one address (another sidecar, or the local app)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from typing import Protocol

from sidecar import tls
from sidecar.config import Address
from sidecar.h2 import frames as F
from sidecar.h2.connection import H2Connection
from sidecar.h2.hpack_codec import Header
from sidecar.h2.stream import Limits, Stream

log = logging.getLogger(__name__)


class UpstreamCall(Protocol):
    """What the pool needs from the call that owns a waiting stream."""

    cancelled: bool

    def request_headers(self) -> list[Header]: ...


class UpstreamPool:
    """Opens streams on the first connection with room; connects more as needed."""

    def __init__(
        self,
        address: Address,
        *,
        ssl_context: ssl.SSLContext | None,
        limits: Limits,
        max_connections: int = 4,
        connect_timeout: float = 5.0,
        expected_identity: str = "",
    ) -> None:
        self.address = address
        # Secure naming: the SPIFFE ID the peer's certificate must carry ("" = any from the mesh CA).
        self.expected_identity = expected_identity
        self.identity_mismatches = 0
        self.ssl_context = ssl_context
        self.limits = limits
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.connections: list[H2Connection] = []
        self._connecting = 0
        self._waiting: deque[Stream] = deque()
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    def in_flight(self) -> int:
        """Calls open or waiting on this pool (least-request balancing compares these)."""
        return sum(len(conn.streams) for conn in self.connections) + len(self._waiting)

    def waiting(self) -> int:
        """Calls waiting for a connection or a stream slot (connectionPool's pending requests)."""
        return len(self._waiting)

    def submit(self, stream: Stream) -> None:
        for conn in self.connections:
            if conn.can_open_stream:
                self._start(conn, stream)
                return
        self._waiting.append(stream)
        if self._connecting == 0 and len(self.connections) < self.max_connections:
            task = asyncio.get_running_loop().create_task(self._connect())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _start(self, conn: H2Connection, stream: Stream) -> None:
        call: UpstreamCall = stream.handler  # type: ignore[assignment]
        if call.cancelled:
            return
        conn.open_stream(stream, call.request_headers())

    async def _connect(self) -> None:
        self._connecting += 1
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    self._new_connection,
                    self.address.host,
                    self.address.port,
                    ssl=self.ssl_context,
                    server_hostname="" if self.ssl_context is not None else None,
                ),
                self.connect_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.warning("connect to %s failed: %s", self.address, exc)
            self._connecting -= 1
            self._fail_waiting()
            return
        self._connecting -= 1
        if self.ssl_context is not None and conn.transport is not None:
            ssl_object = conn.transport.get_extra_info("ssl_object")
            if not tls.negotiated_h2(ssl_object):
                log.warning("upstream %s did not negotiate h2", self.address)
                conn.abort()
                self._fail_waiting()
                return
            conn.peer_identity = tls.peer_spiffe_id(ssl_object)
            if self.expected_identity and conn.peer_identity != self.expected_identity:
                # The certificate is from the mesh CA, but not the workload this address should be.
                self.identity_mismatches += 1
                log.warning(
                    "upstream %s presented %s, expected %s (secure naming); connection refused",
                    self.address,
                    conn.peer_identity or "no SPIFFE ID",
                    self.expected_identity,
                )
                conn.abort()
                self._fail_waiting()
                return
        if self._closed:
            conn.drain()
            self._fail_waiting()
            return
        self.connections.append(conn)
        self._drain_waiting()

    def _new_connection(self) -> H2Connection:
        return H2Connection(
            client=True, limits=self.limits, on_closed=self._on_closed, on_capacity=self._on_capacity
        )

    def _fail_waiting(self) -> None:
        waiting = list(self._waiting)
        self._waiting.clear()
        for stream in waiting:
            if stream.handler is not None:
                stream.handler.on_reset(stream, F.CONNECT_ERROR)

    def _drain_waiting(self) -> None:
        while self._waiting:
            conn = next((c for c in self.connections if c.can_open_stream), None)
            if conn is None:
                if (
                    self._connecting == 0
                    and len(self.connections) < self.max_connections
                    and not self._closed
                ):
                    task = asyncio.get_running_loop().create_task(self._connect())
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                return
            self._start(conn, self._waiting.popleft())

    def _on_capacity(self, conn: H2Connection) -> None:
        if self._waiting:
            self._drain_waiting()

    def _on_closed(self, conn: H2Connection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)
        if self._waiting and not self._closed:
            self._drain_waiting()

    def renew(self, ssl_context: ssl.SSLContext) -> None:
        """A new certificate or trust bundle: new connections use `ssl_context`; the open ones
        stop taking calls and drain (GOAWAY), so the calls on them finish where they are."""
        self.ssl_context = ssl_context
        old, self.connections = self.connections, []
        for conn in old:
            conn.drain()
        if self._waiting and not self._closed:
            self._drain_waiting()

    async def close(self) -> None:
        self._closed = True
        self._fail_waiting()
        drains = [conn.drain() for conn in list(self.connections)]
        if drains:
            await asyncio.gather(*drains, return_exceptions=True)


class Pools:
    """One pool per upstream address, created on first use, retired when no snapshot names it."""

    def __init__(self, limits: Limits, client_ssl: ssl.SSLContext | None) -> None:
        self.limits = limits
        self.client_ssl = client_ssl
        self._pools: dict[tuple[Address, bool], UpstreamPool] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, address: Address, *, secure: bool, identity: str = "") -> UpstreamPool:
        """The pool for `address`; for a secure one, `identity` (when known) is the SPIFFE ID
        the peer must present (secure naming), following what the latest snapshot says."""
        key = (address, secure)
        pool = self._pools.get(key)
        if pool is None:
            if secure and self.client_ssl is None:
                raise ValueError("mutual TLS to other sidecars needs tls certificates")
            pool = UpstreamPool(
                address,
                ssl_context=self.client_ssl if secure else None,
                limits=self.limits,
                expected_identity=identity if secure else "",
            )
            self._pools[key] = pool
        elif secure and identity and pool.expected_identity != identity:
            pool.expected_identity = identity  # another workload at this address now: new connections only
        return pool

    def retire_secure(self, keep: set[Address]) -> None:
        """Close the pools of remote endpoints not in `keep`. Their calls in flight finish: a
        closing pool drains its connections (GOAWAY), it does not cut them."""
        for key in [k for k in self._pools if k[1] and k[0] not in keep]:
            pool = self._pools.pop(key)
            task = asyncio.get_running_loop().create_task(pool.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def renew(self, client_ssl: ssl.SSLContext) -> None:
        """Rotate the client certificate (or trust bundle) of every pool to other sidecars."""
        self.client_ssl = client_ssl
        for (_, secure), pool in self._pools.items():
            if secure:
                pool.renew(client_ssl)

    def all(self) -> list[UpstreamPool]:
        return list(self._pools.values())

    async def close(self) -> None:
        await asyncio.gather(
            *(pool.close() for pool in self._pools.values()), *self._closing, return_exceptions=True
        )
