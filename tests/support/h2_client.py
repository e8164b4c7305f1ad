"""A bare HTTP/2 client (the h2 library on a blocking socket) for checks below grpcio.

grpcio hides some of the wire (it never shows the grpc-message of an OK status, for one);
these helpers show exactly which headers and trailers came back, and whether a listener
speaks HTTP/2 at all to a given kind of client.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions

Headers = list[tuple[str, str]]


@dataclass
class RawResponse:
    headers: Headers = field(default_factory=list)
    data: bytes = b""
    trailers: Headers = field(default_factory=list)
    reset_code: int | None = None

    def trailer(self, name: str) -> str | None:
        """A header from the trailers, or from the headers of a Trailers-Only response."""
        for key, value in self.trailers or self.headers:
            if key == name:
                return value
        return None


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def grpc_frame(body: bytes) -> bytes:
    return b"\x00" + len(body).to_bytes(4, "big") + body


def call(
    address: str,
    path: str,
    body: bytes,
    *,
    authority: str,
    metadata: Headers | None = None,
    timeout: float = 10.0,
) -> RawResponse:
    """One unary gRPC call over plaintext HTTP/2; returns what came back, undecoded."""
    host, port = _split(address)
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config)
    response = RawResponse()
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        conn.initiate_connection()
        conn.send_headers(1, [*_request_headers(path, authority, "http"), *(metadata or [])])
        conn.send_data(1, grpc_frame(body), end_stream=True)
        sock.sendall(conn.data_to_send())
        ended = False
        while not ended:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed before the response ended")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    response.headers = [(str(k), str(v)) for k, v in event.headers]
                elif isinstance(event, h2.events.DataReceived):
                    response.data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    response.trailers = [(str(k), str(v)) for k, v in event.headers]
                elif isinstance(event, h2.events.StreamReset):
                    response.reset_code = int(event.error_code)
                    ended = True
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            sock.sendall(conn.data_to_send())
    return response


@contextlib.contextmanager
def hung_up_after(address: str, path: str, body: bytes, *, authority: str) -> Iterator[None]:
    """Send a unary request and keep the connection open for the `with` block; then close the
    TCP connection without RST_STREAM or GOAWAY, as a client that went away does."""
    host, port = _split(address)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    with socket.create_connection((host, port), timeout=10) as sock:
        conn.initiate_connection()
        conn.send_headers(1, _request_headers(path, authority, "http"))
        conn.send_data(1, grpc_frame(body), end_stream=True)
        sock.sendall(conn.data_to_send())
        yield


def _request_headers(path: str, authority: str, scheme: str) -> Headers:
    return [
        (":method", "POST"), (":scheme", scheme), (":path", path), (":authority", authority),
        ("content-type", "application/grpc"), ("te", "trailers"),
    ]  # fmt: skip


def speaks_h2(address: str, ssl_context: ssl.SSLContext | None = None, timeout: float = 5.0) -> bool:
    """Connect (over TLS with ssl_context, else plaintext), send the HTTP/2 preface and SETTINGS,
    and report whether the listener answered with HTTP/2 SETTINGS. A refused handshake, a TLS
    alert, a closed connection or bytes that are not HTTP/2 all count as no."""
    host, port = _split(address)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            sock: socket.socket = raw
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(raw, server_hostname=None)
            try:
                conn.initiate_connection()
                sock.sendall(conn.data_to_send())
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    data = sock.recv(65536)
                    if not data:
                        return False
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.RemoteSettingsChanged):
                            return True
                return False
            finally:
                if sock is not raw:
                    sock.close()
    except (OSError, h2.exceptions.ProtocolError):  # ssl.SSLError is an OSError
        return False
