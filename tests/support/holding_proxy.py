"""A TCP relay that holds back the server's first bytes, for ordering tests.

Each accepted connection is relayed to `target`. Client bytes go through at once; the server's
bytes are held until the client has sent `release_after` bytes (or `fallback` seconds have passed
since the connection was accepted), then delivered in order, and the connection is a plain relay
from then on. In front of an HTTP/2 server this makes the client act on its first bytes
before it sees the server's SETTINGS, every time.

`stall()` turns it into a silently dead path, as when a host vanishes or a firewall starts dropping
packets: from then on nothing is forwarded either way, on every connection (new ones included),
and nothing is closed — neither end hears of the other until its own keepalive gives up.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable


class _Pair:
    def __init__(
        self,
        client: socket.socket,
        server: socket.socket,
        release_after: int,
        fallback: float,
        stalled: threading.Event,
    ) -> None:
        self.client = client
        self.server = server
        self.stalled = stalled
        self.release_after = release_after
        self.deadline = time.monotonic() + fallback
        self.lock = threading.Lock()
        self.held = bytearray()
        self.released = False
        self.sent = 0

    def _release(self) -> None:  # with self.lock held
        if not self.released:
            self.released = True
            if self.held:
                self.client.sendall(bytes(self.held))
                self.held.clear()

    def client_to_server(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.client.recv(65536):
                if self.stalled.is_set():
                    continue  # dropped
                self.server.sendall(data)
                with self.lock:
                    self.sent += len(data)
                    if self.sent >= self.release_after:
                        self._release()
        if not self.stalled.is_set():
            self.close()

    def server_to_client(self) -> None:
        with contextlib.suppress(OSError):
            self.server.settimeout(0.05)
            while True:
                try:
                    data = self.server.recv(65536)
                except TimeoutError:
                    data = None
                with self.lock:
                    if not self.released and time.monotonic() >= self.deadline:
                        self._release()
                    if data is None or (data and self.stalled.is_set()):
                        continue  # nothing yet, or dropped
                    if not data:
                        break
                    if self.released:
                        self.client.sendall(data)
                    else:
                        self.held += data
        if not self.stalled.is_set():
            self.close()

    def close(self) -> None:
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class HoldingProxy:
    def __init__(self, target: str, *, release_after: int, fallback: float = 1.0) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.release_after = release_after
        self.fallback = fallback
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._closing = threading.Event()
        self._stalled = threading.Event()
        self._pairs: list[_Pair] = []
        self._threads: list[threading.Thread] = []
        self._start(self._accept_loop)

    def _start(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            pair = _Pair(client, server, self.release_after, self.fallback, self._stalled)
            self._pairs.append(pair)
            self._start(pair.client_to_server)
            self._start(pair.server_to_client)

    def stall(self) -> None:
        """Forward nothing from now on, either way, and close nothing (see the module docstring)."""
        self._stalled.set()

    def close(self) -> None:
        self._closing.set()
        self._listener.close()
        for pair in self._pairs:
            pair.close()
        for thread in self._threads:
            thread.join(timeout=5)
        for pair in self._pairs:
            pair.client.close()
            pair.server.close()
