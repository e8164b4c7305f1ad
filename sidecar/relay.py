"""The relay: accepts gRPC calls on a listener, decides each once, and pairs it with an upstream stream.

Everything per call lives in one ProxyCall. The request head is parsed once (and memoised for
repeated header blocks), the filter chain picks a Target, and from then on DATA frames flow
between the two streams without being decoded. Errors the sidecar makes become gRPC statuses
here, and only here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sidecar import tls
from sidecar.call import CallHead, Handler
from sidecar.errors import MeshError, status_for
from sidecar.grpc_wire import Code, format_timeout, parse_timeout, status_of, status_trailers, trailers_only
from sidecar.h2 import frames as F
from sidecar.h2.connection import H2Connection
from sidecar.h2.hpack_codec import Header, HeaderList
from sidecar.h2.stream import Limits, Stream
from sidecar.stats import Stats

if TYPE_CHECKING:
    from sidecar.access_log import AccessLog
    from sidecar.metrics import CallMetrics
    from sidecar.pool import UpstreamPool

log = logging.getLogger(__name__)

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"}
)
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority"})
_PARSE_CACHE_LIMIT = 1024

# RST_STREAM codes from the upstream, as the status the call is counted with.
_RESET_STATUS = {
    F.CANCEL: Code.CANCELLED,
    F.REFUSED_STREAM: Code.UNAVAILABLE,
    F.ENHANCE_YOUR_CALM: Code.RESOURCE_EXHAUSTED,
    F.INADEQUATE_SECURITY: Code.PERMISSION_DENIED,
}


class Malformed(Exception):
    """A request that breaks HTTP/2's rules: a stream error (PROTOCOL_ERROR)."""


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    path: str
    path_bytes: bytes
    authority: str
    timeout: float | None
    grpc: bool
    forward: tuple[Header, ...]


def parse_request(headers: HeaderList) -> ParsedRequest:
    method = path = authority = scheme = None
    timeout: float | None = None
    grpc = False
    forward: list[Header] = []
    regular = False
    seen: set[bytes] = set()
    for header in headers:
        name, value, _ = header
        if name[:1] == b":":
            if regular:
                raise Malformed("pseudo-header after a regular header")
            if name not in _REQUEST_PSEUDO:
                raise Malformed(f"unknown request pseudo-header {name!r}")
            if name in seen:
                raise Malformed(f"repeated pseudo-header {name!r}")
            seen.add(name)
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            else:
                scheme = value
            continue
        regular = True
        if name.lower() != name:
            raise Malformed("upper-case header name")
        if name in _HOP_BY_HOP:
            continue
        if name == b"te":
            if value != b"trailers":
                continue
        elif name == b"grpc-timeout":
            try:
                timeout = parse_timeout(value)
            except ValueError:
                raise Malformed("malformed grpc-timeout") from None
            continue
        elif name == b"content-type":
            grpc = value == b"application/grpc" or value.startswith(
                (b"application/grpc+", b"application/grpc;")
            )
        forward.append(header)
    if method is None or path is None or scheme is None or not path.startswith(b"/"):
        raise Malformed("missing or invalid :method, :scheme or :path")
    if method != b"POST":
        grpc = False
    return ParsedRequest(
        path.decode("ascii", "replace"),
        path,
        (authority or b"").decode("ascii", "replace"),
        timeout,
        grpc,
        tuple(forward),
    )


def _response_headers(headers: HeaderList) -> list[Header]:
    return [h for h in headers if h[0] not in _HOP_BY_HOP]


class ProxyCall:
    """One relayed call: the downstream (caller) stream and the upstream stream it is paired with."""

    __slots__ = (
        "authority",
        "cancelled",
        "deadline",
        "direction",
        "done",
        "down",
        "forward",
        "path",
        "peer",
        "pool",
        "relay",
        "report",
        "scheme",
        "service",
        "start",
        "timer",
        "up",
        "version",
    )

    def __init__(
        self,
        relay: Relay,
        down: Stream,
        head: CallHead,
        parsed: ParsedRequest,
        authority: bytes,
        scheme: bytes,
        service: str,
        now: float,
        version: str,
        pool: UpstreamPool | None = None,
        report: Callable[[int], None] | None = None,
    ) -> None:
        self.relay = relay
        self.pool = pool  # where the call went (the access log's upstream)
        self.report = report
        self.direction = relay.direction
        self.down = down
        self.up = Stream(self)
        self.path = parsed.path_bytes
        self.authority = authority
        self.scheme = scheme
        self.forward = head.headers
        self.service = service
        self.version = version  # the destination's version label, for the metrics
        self.peer = head.peer
        self.deadline = head.deadline
        self.start = now
        self.cancelled = False
        self.done = False
        self.timer: asyncio.TimerHandle | None = None
        down.handler = self
        down.peer = self.up
        self.up.peer = down

    def request_headers(self) -> list[Header]:
        headers: list[Header] = [
            (b":method", b"POST", False),
            (b":scheme", self.scheme, False),
            (b":path", self.path, False),
            (b":authority", self.authority, False),
        ]
        headers += self.forward
        if self.deadline is not None:
            remaining = self.deadline - self.relay.clock()
            headers.append((b"grpc-timeout", format_timeout(max(remaining, 1e-6)), False))
        return headers

    # ---------------------------------------------------------------- StreamHandler

    def on_headers(self, stream: Stream, headers: HeaderList, end_stream: bool) -> None:
        down = self.down
        if stream is not self.up:
            # Request trailers (gRPC clients do not send them): pass them on if we can.
            up = self.up
            if up.conn is not None:
                up.conn.send_trailers(up, _response_headers(headers))
            else:
                up.end_queued = True
            return
        conn = down.conn
        if conn is None or down.send_closed:
            return
        if not down.headers_sent:
            conn.send_headers(down, _response_headers(headers), end_stream)
            if end_stream:
                self._finish(status_of(headers))
                self._stop_request()
            return
        if not end_stream:
            # A second HEADERS without END_STREAM is not valid gRPC: abort both sides.
            self._abort_upstream(F.PROTOCOL_ERROR)
            self.fail(Code.INTERNAL, "upstream sent an invalid response")
            return
        conn.send_trailers(down, _response_headers(headers))
        self._finish(status_of(headers))
        self._stop_request()

    def on_reset(self, stream: Stream, code: int) -> None:
        if stream is self.down:
            # The caller cancelled (or its connection went away): cancel upstream too.
            self.cancelled = True
            self._abort_upstream(F.CANCEL)
            self._finish(Code.CANCELLED, "cancelled")
            return
        if self.done:
            return
        if code == F.CONNECT_ERROR:
            self.fail(Code.UNAVAILABLE, f"upstream for '{self.service}' is unavailable")
            return
        down = self.down
        if down.conn is not None and not down.send_closed:
            if code == F.REFUSED_STREAM and down.headers_sent:
                code = F.CANCEL
            down.conn.reset(down, code)
        self._finish(_RESET_STATUS.get(code, Code.INTERNAL), "upstream_reset")

    def on_oversized(self, stream: Stream, length: int) -> None:
        which = "request" if stream is self.down else "response"
        self._abort_upstream(F.CANCEL)
        self.fail(
            Code.RESOURCE_EXHAUSTED,
            f"{which} message of {length} bytes exceeds the limit of {self.relay.limits.max_message_bytes}",
        )

    # ---------------------------------------------------------------- endings

    def on_deadline(self) -> None:
        self.timer = None
        if self.done:
            return
        self.cancelled = True
        self._abort_upstream(F.CANCEL)
        self.fail(Code.DEADLINE_EXCEEDED, "deadline exceeded", "deadline")

    def fail(self, code: int, message: str, flags: str = "refused") -> None:
        """End the call for the caller with a status the sidecar makes."""
        down = self.down
        conn = down.conn
        if conn is not None and not down.send_closed:
            if not down.headers_sent:
                conn.send_headers(down, trailers_only(code, message), True)
            elif self.up.at_message_boundary:
                conn.send_trailers(down, status_trailers(code, message))
            else:
                conn.reset(down, F.INTERNAL_ERROR)
        self._stop_request()
        self._finish(code, flags)

    def _stop_request(self) -> None:
        """The response is complete: tell a caller still sending to stop (RST_STREAM NO_ERROR)."""
        down = self.down
        if down.conn is not None and not down.recv_closed and down.send_closed:
            down.conn.reset(down, F.NO_ERROR)

    def _abort_upstream(self, code: int) -> None:
        up = self.up
        self.cancelled = True
        if up.conn is not None:
            up.conn.reset(up, code)

    def _finish(self, status: int, flags: str = "") -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.report is not None:
            self.report(status)
        relay = self.relay
        millis = (relay.clock() - self.start) * 1000.0
        relay.stats.record(self.direction, self.service, status, millis)
        metrics = relay.metrics
        if metrics is not None:
            down = self.down
            metrics.record(
                self.direction,
                self.service,
                self.version,
                self.peer,
                status,
                millis,
                down.received,
                self.up.received,
                down.headers_sent,
            )
        access_log = relay.access_log
        if access_log is not None:
            pool = self.pool
            access_log.record(
                self.forward,
                self.direction,
                relay.source if self.peer is None else self.peer,
                self.service,
                self.path,
                status,
                millis,
                self.down.received,
                self.up.received,
                "" if pool is None else str(pool.address),
                flags,
            )


class _MutualTlsConnection(H2Connection):
    """An inbound connection: h2 must have been negotiated, and the peer's SPIFFE ID is kept."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        if not tls.negotiated_h2(ssl_object):
            log.info("inbound connection without ALPN h2 refused")
            transport.close()
            return
        self.peer_identity = tls.peer_spiffe_id(ssl_object)
        super().connection_made(transport)


class Relay:
    """One listener's request handling: parse, decide through the chain, relay."""

    def __init__(
        self,
        direction: str,
        chain: Callable[[], Handler],
        *,
        limits: Limits,
        stats: Stats,
        secure: bool,
        clock: Callable[[], float] | None = None,
        metrics: CallMetrics | None = None,
        access_log: AccessLog | None = None,
        source: str = "",
    ) -> None:
        self.direction = direction
        self.access_log = access_log
        self.source = source  # this sidecar's service: the access log's source of outbound calls
        self.chain = chain  # returns the current snapshot's chain: calls keep the one they started with
        self.limits = limits
        self.stats = stats
        self.secure = secure
        self.metrics = metrics
        self.loop = asyncio.get_running_loop()
        # Not loop.time: uvloop's is cached per loop iteration at millisecond resolution, which
        # made sub-millisecond calls last 0 ms in the metrics and the access log.
        self.clock = clock or time.perf_counter
        self.connections: set[H2Connection] = set()
        self._parsed: dict[HeaderList, ParsedRequest] = {}

    def protocol(self) -> H2Connection:
        cls = _MutualTlsConnection if self.secure else H2Connection
        # Tracked from connection_made on: asyncio never reports a failed TLS handshake to the
        # protocol, so a connection added earlier would never leave the set.
        return cls(
            client=False,
            limits=self.limits,
            on_request=self.on_request,
            on_closed=self.connections.discard,
            on_made=self.connections.add,
        )

    def on_request(self, stream: Stream, headers: HeaderList, end_stream: bool) -> None:
        conn = stream.conn
        assert conn is not None
        parsed = self._parsed.get(headers)
        if parsed is None:
            try:
                parsed = parse_request(headers)
            except Malformed as exc:
                log.debug("malformed request: %s", exc)
                conn.reset(stream, F.PROTOCOL_ERROR)
                return
            if len(self._parsed) >= _PARSE_CACHE_LIMIT:
                self._parsed.clear()
            self._parsed[headers] = parsed
        if not parsed.grpc:
            conn.send_headers(
                stream, [(b":status", b"415", False), (b"content-type", b"text/plain", False)], True
            )
            if not stream.recv_closed:
                conn.reset(stream, F.NO_ERROR)
            self.stats.incr(f"{self.direction}.not_grpc")
            return
        now = self.clock()
        deadline = now + parsed.timeout if parsed.timeout is not None else None
        head = CallHead(parsed.path, parsed.authority, parsed.forward, conn.peer_identity, deadline)
        try:
            target = self.chain()(head)
        except MeshError as exc:
            code, message = status_for(exc)
            conn.send_headers(stream, trailers_only(code, message), True)
            if not stream.recv_closed:
                conn.reset(stream, F.NO_ERROR)
            self.stats.record(self.direction, head.service or "unknown", code, 0.0)
            if self.metrics is not None:
                # received: the request's DATA so far (none when it has not started)
                self.metrics.record(
                    self.direction, head.service, "", head.peer, code, 0.0, stream.received, 0, True
                )
            if self.access_log is not None:
                self.access_log.record(
                    head.headers,
                    self.direction,
                    self.source if head.peer is None else head.peer,
                    head.service,
                    parsed.path_bytes,
                    code,
                    0.0,
                    stream.received,
                    0,
                    "",
                    "refused",
                )
            return
        metrics = self.metrics
        if metrics is None:
            version = ""
        elif self.direction == "outbound":
            version = metrics.version_of(target.pool)
        else:
            version = metrics.version
        call = ProxyCall(
            self,
            stream,
            head,
            parsed,
            target.authority or parsed.authority.encode(),
            target.scheme,
            target.service,
            now,
            version,
            target.pool,
            target.report,
        )
        if end_stream:
            call.up.end_queued = True
        if deadline is not None:
            call.timer = (
                self.loop.call_at(deadline, call.on_deadline)
                if self.clock == self.loop.time
                else self.loop.call_later(deadline - now, call.on_deadline)
            )
        target.pool.submit(call.up)

    async def drain(self, timeout: float) -> None:
        """GOAWAY every connection and wait (up to timeout) for their calls to finish."""
        waits = [conn.drain() for conn in list(self.connections)]
        if waits:
            done, _ = await asyncio.wait(waits, timeout=timeout)
            if len(done) < len(waits):
                for conn in list(self.connections):
                    conn.abort()  # calls still running after the drain timeout are cut
