"""The inbound listener: one port for mutual TLS and, when PeerAuthentication is PERMISSIVE,
plaintext HTTP/2 too.

Each accepted connection is classified by its first byte, read with MSG_PEEK so nothing is
consumed: 0x16 starts a TLS record (a ClientHello), anything else is taken for plaintext (an
HTTP/2 client sends "PRI * HTTP/2.0..." first; anything that is not the preface is then refused by
the HTTP/2 layer). A TLS connection is handed to asyncio with the server context (client
certificate from the mesh CA required); a plaintext one only when the mode in force allows it,
and is otherwise closed and counted (`inbound.plaintext_refused`). The mode and the TLS context
are read per connection, so a pushed PeerAuthentication applies to the next connection without
a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable

from sidecar.stats import Stats

log = logging.getLogger(__name__)

TLS_HANDSHAKE_RECORD = 0x16
FIRST_BYTES_TIMEOUT = 10.0  # a connection that sends nothing for this long is closed
HANDSHAKE_TIMEOUT = 10.0
_BACKLOG = 128
_ACCEPT_ERROR_PAUSE = 0.1  # out of file descriptors: let some close before accepting again


class InboundListener:
    """Accepts on (host, port) and admits each connection as TLS or plaintext. Looks like the
    part of asyncio.Server the sidecar uses: `sockets`, `close()`, `wait_closed()`."""

    def __init__(
        self,
        protocol: Callable[[], asyncio.Protocol],
        ssl_context: Callable[[], ssl.SSLContext],
        plaintext_allowed: Callable[[], bool],
        stats: Stats,
        *,
        first_bytes_timeout: float = FIRST_BYTES_TIMEOUT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.protocol = protocol
        self.ssl_context = ssl_context
        self.plaintext_allowed = plaintext_allowed
        self.stats = stats
        self.first_bytes_timeout = first_bytes_timeout
        self.handshake_timeout = handshake_timeout
        self.sockets: list[socket.socket] = []
        self._accepting: asyncio.Task[None] | None = None
        self._admitting: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=_BACKLOG)
        sock.setblocking(False)
        self.sockets = [sock]
        self._accepting = asyncio.get_running_loop().create_task(self._accept(sock))

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                log.warning("inbound: accept failed: %s", exc)
                await asyncio.sleep(_ACCEPT_ERROR_PAUSE)
                continue
            task = loop.create_task(self._admit(conn))
            self._admitting.add(task)
            task.add_done_callback(self._admitting.discard)

    async def _admit(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        handed_over = False  # from then on asyncio owns (and closes) the socket
        try:
            conn.setblocking(False)
            try:
                first = await asyncio.wait_for(_peek(loop, conn), self.first_bytes_timeout)
            except TimeoutError:
                self.stats.incr("inbound.first_bytes_timeout")
                return
            if not first:
                return  # closed before saying anything
            if first[0] == TLS_HANDSHAKE_RECORD:
                handed_over = True
                try:
                    await loop.connect_accepted_socket(
                        self.protocol,
                        conn,
                        ssl=self.ssl_context(),
                        ssl_handshake_timeout=self.handshake_timeout,
                    )
                except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
                    # Another CA's certificate, none at all, a handshake cut short: no connection.
                    log.debug("inbound: TLS handshake refused: %s", exc)
                    self.stats.incr("inbound.tls_refused")
                return
            if not self.plaintext_allowed():
                log.debug("inbound: plaintext connection refused (PeerAuthentication STRICT)")
                self.stats.incr("inbound.plaintext_refused")
                return
            handed_over = True
            await loop.connect_accepted_socket(self.protocol, conn)
        except OSError as exc:
            log.debug("inbound: connection lost while admitting it: %s", exc)
        finally:
            if not handed_over:
                conn.close()

    def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        for task in self._admitting:
            task.cancel()
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        tasks = [t for t in (self._accepting, *self._admitting) if t is not None]
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _peek(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
    """The first byte the peer sent, left in the socket; b"" when it closed first."""
    while True:
        try:
            return conn.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            pass
        readable: asyncio.Future[None] = loop.create_future()
        fd = conn.fileno()
        loop.add_reader(fd, _wake, readable)
        try:
            await readable
        finally:
            loop.remove_reader(fd)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
