"""The relay: accepts gRPC calls on a listener, decides each once, and pairs it with an upstream stream.

Everything per call lives in one ProxyCall. The request head is parsed once (and memoised for
repeated header blocks), the filter chain picks a Target, and from then on DATA frames flow
between the two streams without being decoded. Errors the sidecar makes become gRPC statuses
here, and only here.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sidecar import tls
from sidecar.call import CallHead, Handler, Target
from sidecar.errors import FaultAbort, MeshError, status_for
from sidecar.grpc_wire import Code, format_timeout, parse_timeout, status_of, status_trailers, trailers_only
from sidecar.h2 import frames as F
from sidecar.h2.connection import H2Connection
from sidecar.h2.hpack_codec import Header, HeaderList
from sidecar.h2.stream import Limits, Stream
from sidecar.retry import STOP, Destinations, RetryLimits, backoff, pushback
from sidecar.stats import Stats

if TYPE_CHECKING:
    from sidecar.access_log import AccessLog
    from sidecar.metrics import CallMetrics
    from sidecar.pool import UpstreamPool
    from sidecar.tracing import CallTrace, Tracer

log = logging.getLogger(__name__)

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"}
)
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority"})
_PARSE_CACHE_LIMIT = 1024
_MAX_TRANSPARENT = 3  # retries of attempts that never reached an application, per call
_REPICKS = 4  # tries at picking an endpoint not tried yet, for a retry
_MIRROR_TIMEOUT = 30.0  # seconds a mirrored copy of a call without a deadline may take
# A caller's cancel this close to the call's deadline is the deadline expiring (seconds).
DEADLINE_SLACK = 0.05

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


class _Abandoned:
    """The handler of an upstream stream a retry left behind: it hears nothing more."""

    cancelled = True

    def on_headers(self, stream: Stream, headers: HeaderList, end_stream: bool) -> None:
        pass

    def on_reset(self, stream: Stream, code: int) -> None:
        pass

    def on_oversized(self, stream: Stream, length: int) -> None:
        if stream.conn is not None:
            stream.conn.reset(stream, F.CANCEL)


ABANDONED = _Abandoned()


class MirrorCall:
    """A copy of a call sent to a route's mirror: fed the request as it arrives, its reply
    discarded. Whatever it does, the caller's call does not notice."""

    __slots__ = ("cancelled", "headers", "limit", "sent", "stats", "stream", "timer")

    def __init__(self, headers: list[Header], stats: Stats, limit: int) -> None:
        self.headers = headers
        self.stats = stats
        self.limit = limit
        self.sent = 0
        self.cancelled = False
        self.timer: asyncio.TimerHandle | None = None
        self.stream = Stream(self)  # no peer: what the mirror answers is credited and dropped

    def request_headers(self) -> list[Header]:
        return self.headers

    def feed(self, data: bytes, end: bool) -> None:
        if self.cancelled:
            return
        self.sent += len(data)
        if self.sent > self.limit:
            self.stats.incr("outbound.mirror_too_large")
            self.cancel()
            return
        stream = self.stream
        if stream.conn is not None:
            stream.conn.send_data(stream, data, end)
        else:
            if data:
                stream.pending.append(data)
                stream.pending_bytes += len(data)
            if end:
                stream.end_queued = True

    def cancel(self) -> None:
        self._done()
        self.cancelled = True
        stream = self.stream
        if stream.conn is not None:
            stream.conn.reset(stream, F.CANCEL)

    def _done(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def on_headers(self, stream: Stream, headers: HeaderList, end_stream: bool) -> None:
        if end_stream:
            self._done()
            self.cancelled = True
            ok = status_of(headers) == Code.OK
            self.stats.incr("outbound.mirror_ok" if ok else "outbound.mirror_failed")

    def on_reset(self, stream: Stream, code: int) -> None:
        if not self.cancelled:
            self._done()
            self.cancelled = True
            self.stats.incr("outbound.mirror_failed")

    def on_oversized(self, stream: Stream, length: int) -> None:
        self.cancel()


class ProxyCall:
    """One relayed call: the downstream (caller) stream and the upstream stream of its current
    attempt. Until the call commits (response headers, or a request too long to buffer), a
    failed attempt may be retried on a new upstream stream with the buffered request."""

    __slots__ = (
        "attempt",
        "authority",
        "backoff_n",
        "buffer",
        "buffered",
        "cancelled",
        "cluster",
        "deadline",
        "dest",
        "direction",
        "done",
        "down",
        "flags",
        "forward",
        "handler",
        "head",
        "mirror",
        "path",
        "peer",
        "per_try",
        "pool",
        "relay",
        "report",
        "request_done",
        "retry",
        "retrying",
        "scheme",
        "service",
        "start",
        "timer",
        "trace",
        "transparent",
        "tried",
        "up",
        "version",
        "wait",
    )

    def __init__(
        self,
        relay: Relay,
        down: Stream,
        head: CallHead,
        parsed: ParsedRequest,
        target: Target,
        now: float,
        version: str,
        handler: Handler | None = None,
    ) -> None:
        self.relay = relay
        self.direction = relay.direction
        self.down = down
        self.up = Stream(self)
        self.head = head
        self.handler = handler  # the chain the call was decided by (a retry picks its endpoint there)
        self.path = parsed.path_bytes
        self.authority = target.authority or parsed.authority.encode()
        self.scheme = target.scheme
        self.forward = head.headers
        self.service = target.service
        self.version = version  # the destination's version label, for the metrics
        self.peer = head.peer
        self.deadline = head.deadline
        self.start = now
        self.cancelled = False
        self.done = False
        self.timer: asyncio.TimerHandle | None = None  # the call's deadline
        self.per_try: asyncio.TimerHandle | None = None  # the current attempt's perTryTimeout
        self.wait: asyncio.TimerHandle | None = None  # a backoff, or an injected delay
        self.pool: UpstreamPool | None = target.pool  # the current attempt's endpoint
        self.report = target.report
        self.cluster = target.cluster  # where the call was first sent (its maxRetries)
        self.flags = ""
        policy = head.policy
        self.retry = None if policy is None else policy.retry
        self.attempt = 1
        self.backoff_n = 0
        self.transparent = 0
        self.tried: list[UpstreamPool] = [target.pool]
        self.request_done = False
        self.retrying = False
        # The request so far, while a retry may still need it; None once the call is committed.
        self.buffer: list[bytes] | None = [] if self.retry is not None else None
        self.buffered = 0
        destinations = relay.destinations
        self.dest = None if destinations is None else destinations.get(self.service)
        if self.dest is not None:
            self.dest.active += 1
        self.mirror: MirrorCall | None = None
        self.trace: CallTrace | None = None  # set by the relay when it traces calls
        down.handler = self
        down.peer = self.up
        self.up.peer = down

    def begin(self, target: Target, end_stream: bool) -> None:
        """Start the first attempt (after an injected delay, if the route asked for one)."""
        up = self.up
        if end_stream:
            up.end_queued = True
            self.request_done = True
        head = self.head
        if head.mirror is not None:
            self._start_mirror(head.mirror)
        if self.buffer is not None or self.mirror is not None:
            self.down.tap = self._on_request_data
        if head.delay > 0.0:
            self.flags = "fault_delay"
            self.wait = self.relay.loop.call_later(head.delay, self._submit)
        else:
            self._submit()

    def _submit(self) -> None:
        self.wait = None
        if self.done:
            return
        retry = self.retry
        if retry is not None and retry.per_try_timeout is not None:
            self.per_try = self.relay.loop.call_later(retry.per_try_timeout, self.on_per_try_timeout)
        assert self.pool is not None
        self.pool.submit(self.up)

    def request_headers(self) -> list[Header]:
        headers: list[Header] = [
            (b":method", b"POST", False),
            (b":scheme", self.scheme, False),
            (b":path", self.path, False),
            (b":authority", self.authority, False),
        ]
        headers += self.forward if self.trace is None else self.trace.headers
        if self.attempt > 1:
            headers.append((b"grpc-previous-rpc-attempts", str(self.attempt - 1).encode(), False))
        timeout = None
        if self.deadline is not None:
            timeout = max(self.deadline - self.relay.clock(), 1e-6)
        retry = self.retry
        if retry is not None and retry.per_try_timeout is not None and not self.down.headers_sent:
            timeout = retry.per_try_timeout if timeout is None else min(timeout, retry.per_try_timeout)
        if timeout is not None:
            headers.append((b"grpc-timeout", format_timeout(timeout), False))
        return headers

    def _start_mirror(self, target: Target) -> None:
        relay = self.relay
        limits = relay.retry_limits
        headers = self.request_headers()
        headers[3] = (b":authority", (target.authority or self.authority) + b"-shadow", False)
        if self.deadline is None:  # the copy gets the caller's deadline, or a bounded one
            headers.append((b"grpc-timeout", format_timeout(_MIRROR_TIMEOUT), False))
        mirror = MirrorCall(headers, relay.stats, limits.mirror_bytes)
        if self.request_done:
            mirror.stream.end_queued = True
        remaining = _MIRROR_TIMEOUT if self.deadline is None else self.deadline - relay.clock()
        mirror.timer = relay.loop.call_later(max(remaining, 0.0) + 1.0, mirror.cancel)
        relay.stats.incr("outbound.mirrored")
        self.mirror = mirror
        target.pool.submit(mirror.stream)

    def _on_request_data(self, data: bytes, end: bool) -> None:
        """The down stream's tap: each request DATA payload, before it is relayed."""
        if end:
            self.request_done = True
        buffer = self.buffer
        if buffer is not None:
            self.buffered += len(data)
            if self.buffered > self.relay.retry_limits.buffer_bytes:
                self.buffer = None  # too long to replay: the call is committed to this attempt
                self.relay.stats.incr(f"{self.direction}.retry_buffer_overflow")
            elif data:
                buffer.append(data)
        mirror = self.mirror
        if mirror is not None:
            mirror.feed(data, end)
        if self.buffer is None and (mirror is None or mirror.cancelled):
            self.down.tap = None

    def _commit(self) -> None:
        """Response headers arrived: this attempt's answer goes to the caller, whatever follows."""
        self.buffer = None
        if self.per_try is not None:
            self.per_try.cancel()
            self.per_try = None
        if self.mirror is None or self.mirror.cancelled:
            self.down.tap = None

    # ---------------------------------------------------------------- StreamHandler

    def on_headers(self, stream: Stream, headers: HeaderList, end_stream: bool) -> None:
        down = self.down
        if stream is down:
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
            if end_stream:
                status = status_of(headers)
                pushed = _pushback_header(headers)
                if status != Code.OK and self._retry(status, pushed, self._per_try_due()):
                    return
                conn.send_headers(down, _response_headers(headers), True)
                self._finish(status)
                self._stop_request()
                return
            self._commit()
            conn.send_headers(down, _response_headers(headers), False)
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
            deadline = self.deadline
            if deadline is not None and self.relay.clock() >= deadline - DEADLINE_SLACK:
                # A caller gives up at its deadline a hair before the sidecar's timer (which
                # started when the headers arrived): the upstream was too slow, as the caller
                # sees it, and outlier detection must count it so.
                self._finish(Code.DEADLINE_EXCEEDED, "deadline")
            else:
                self._finish(Code.CANCELLED, "cancelled")
            return
        if self.done:
            return
        down = self.down
        if not down.headers_sent:
            never_sent = stream.conn is None  # it never reached a connection: the pool failed
            if (never_sent or (code == F.REFUSED_STREAM and self.buffer is not None)) and (
                self._transparent_retry()
            ):
                return
            status = Code.UNAVAILABLE if code in (F.CONNECT_ERROR, F.REFUSED_STREAM) else None
            if status is not None and self._retry(status, None):
                return
            if code == F.CONNECT_ERROR:
                self.fail(Code.UNAVAILABLE, f"upstream for '{self.service}' is unavailable")
                return
        elif code == F.CONNECT_ERROR:
            self.fail(Code.UNAVAILABLE, f"upstream for '{self.service}' is unavailable")
            return
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

    # ---------------------------------------------------------------- retries

    def on_per_try_timeout(self) -> None:
        self.per_try = None
        if self.done or self.down.headers_sent:
            return
        if self._retry(Code.DEADLINE_EXCEEDED, None, per_try=True):
            return
        self._abort_upstream(F.CANCEL)
        self.fail(Code.DEADLINE_EXCEEDED, "per-try timeout exceeded", "deadline")

    def _per_try_due(self) -> bool:
        """The perTryTimeout is up (its timer due, not yet run): an upstream answer now, such as the
        DEADLINE_EXCEEDED of the per-try `grpc-timeout` it was given, is that timeout's expiry."""
        per_try = self.per_try
        return per_try is not None and per_try.when() <= self.relay.loop.time()

    def _retry(self, status: int, pushed: bytes | None, per_try: bool = False) -> bool:
        """The current attempt failed with `status` before the call committed: start another
        attempt after a backoff if the route's policy and the limits allow. True if one will."""
        retry = self.retry
        if retry is None or self.buffer is None or not (per_try or retry.retryable(status)):
            return False
        relay = self.relay
        stats = relay.stats
        dest = self.dest
        if dest is not None:
            dest.attempt_failed()
        delay = pushback(pushed)
        if delay == STOP:
            stats.incr(f"{self.direction}.retry_pushback_stop")
            return False
        if self.attempt >= retry.max_attempts:
            stats.incr(f"{self.direction}.retry_exhausted")
            return False
        if dest is not None:
            # A call already retrying holds its place in the budget; the throttle still applies.
            denied = dest.throttled() if self.retrying else dest.may_retry()
            if denied is not None:
                stats.incr(f"{self.direction}.retry_denied_{denied}")
                return False
        cluster = self.cluster
        if cluster is not None and not self.retrying and not cluster.may_retry():
            stats.incr(f"{self.direction}.retry_denied_max_retries")
            return False
        if delay is None:
            self.backoff_n += 1
            delay = backoff(retry, self.backoff_n, relay.random)
        else:
            self.backoff_n = 0  # A6: after a pushback, backoff starts again from the initial one
        if self.deadline is not None and relay.clock() + delay >= self.deadline:
            stats.incr(f"{self.direction}.retry_deadline")
            return False
        if self.report is not None:
            self.report(status)
        up = self._abandon()
        if not self.retrying:
            self.retrying = True
            if dest is not None:
                dest.retries_active += 1
            if cluster is not None:
                cluster.retries_active += 1
        self.attempt += 1
        self.flags = "retried"
        stats.incr(f"{self.direction}.retries")
        if self.trace is not None:
            self.trace.retried(self.attempt, status, delay)
        self._replay_into(up)
        self.wait = relay.loop.call_later(delay, self._next_attempt)
        return True

    def _transparent_retry(self) -> bool:
        """An attempt that never reached the upstream's application (its connection failed, or
        REFUSED_STREAM): retried at once on another endpoint, not counted as an attempt (A6)."""
        if self.transparent >= _MAX_TRANSPARENT:
            return False
        try:
            target = self._pick(fresh_only=True)
        except MeshError:
            return False
        if target is None:
            return False
        self.transparent += 1
        if self.report is not None:
            self.report(Code.UNAVAILABLE)
        up = self._abandon()
        self._replay_into(up)
        self.relay.stats.incr(f"{self.direction}.transparent_retries")
        self._start_attempt(target)
        return True

    def _abandon(self) -> Stream:
        """Leave the current attempt's upstream stream; a new one (not yet on a connection) takes
        its place as the down stream's peer."""
        old = self.up
        old.handler = ABANDONED
        if self.per_try is not None:
            self.per_try.cancel()
            self.per_try = None
        new = Stream(self)
        if old.conn is None:
            # Never sent: its queued request moves over as it is.
            new.pending, old.pending = old.pending, new.pending
            new.pending_bytes, old.pending_bytes = old.pending_bytes, 0
            new.uncredited, old.uncredited = old.uncredited, 0
            new.end_queued = old.end_queued
            new.tail = old.tail
        else:
            # Reset while still the down stream's peer: its unsent data is credited to the
            # caller, so all of the buffered request has been; the replay must not be again.
            old.conn.reset(old, F.CANCEL)
        old.peer = None
        new.peer = self.down
        self.down.peer = new
        self.up = new
        return old

    def _replay_into(self, old: Stream) -> None:
        new = self.up
        if old.conn is not None and self.buffer is not None:
            new.pending.extend(self.buffer)
            new.pending_bytes = new.uncredited = self.buffered
            new.end_queued = self.request_done

    def _next_attempt(self) -> None:
        self.wait = None
        if self.done:
            return
        try:
            target = self._pick(fresh_only=False)
        except MeshError as exc:  # e.g. the destination's breaker opened meanwhile
            self.fail(*status_for(exc))
            return
        if target is None:
            self.fail(Code.UNAVAILABLE, f"no endpoint left for '{self.service}'")
            return
        self._start_attempt(target)

    def _start_attempt(self, target: Target) -> None:
        self.pool = target.pool
        self.report = target.report
        self.tried.append(target.pool)
        self._submit()

    def _pick(self, fresh_only: bool) -> Target | None:
        """Another endpoint of the call's cluster: one not tried yet when there is one (and only
        such a one when `fresh_only`). MeshError when the cluster refuses the call."""
        head = self.head
        pick = head.repick or self.handler
        if pick is None:
            return None
        target = None
        for _ in range(_REPICKS):
            target = pick(head)  # MeshError: no endpoint may take it (breaker, limits)
            if target.pool not in self.tried:
                return target
        return None if fresh_only else target

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
        for timer in (self.timer, self.per_try, self.wait):
            if timer is not None:
                timer.cancel()
        self.timer = self.per_try = self.wait = None
        self.buffer = None
        self.down.tap = None
        mirror = self.mirror
        if mirror is not None and not self.request_done:
            mirror.cancel()  # the copy would never see the end of its request
        if self.report is not None:
            self.report(status)
        if self.trace is not None:
            self.trace.end(status, self.attempt)
        dest = self.dest
        if dest is not None:
            dest.active -= 1
            if self.retrying:
                dest.retries_active -= 1
            if status == Code.OK:
                dest.call_succeeded()
        if self.retrying and self.cluster is not None:
            self.cluster.retries_active -= 1
        if self.flags:
            flags = f"{self.flags},{flags}" if flags else self.flags
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
                self.forward if self.trace is None else self.trace.headers,  # with this hop's trace id
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
                self.attempt,
            )


def _pushback_header(headers: HeaderList) -> bytes | None:
    for name, value, _ in headers:
        if name == b"grpc-retry-pushback-ms":
            return value
    return None


class _MutualTlsConnection(H2Connection):
    """An inbound connection. Over TLS, h2 must have been negotiated, and the peer's SPIFFE ID is
    kept; a plaintext one (sidecar.listener admits those only under PeerAuthentication
    PERMISSIVE) has no peer identity."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
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
        destinations: Destinations | None = None,
        rand: random.Random | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.direction = direction
        self.tracer = tracer
        # Calls and retries in flight per destination (the retry budget); outbound only.
        self.destinations = destinations
        self.retry_limits = destinations.limits if destinations is not None else RetryLimits()
        self.random = rand if rand is not None else random.Random()
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
        handler = self.chain()
        try:
            target = handler(head)
        except MeshError as exc:
            self._refuse(stream, head, parsed, exc)
            return
        policy = head.policy
        if policy is not None and policy.timeout is not None:
            # The route's timeout bounds the whole call, retries included.
            route_deadline = now + policy.timeout
            if deadline is None or route_deadline < deadline:
                deadline = head.deadline = route_deadline
        metrics = self.metrics
        if metrics is None:
            version = ""
        elif self.direction == "outbound":
            version = metrics.version_of(target.pool)
        else:
            version = metrics.version
        call = ProxyCall(self, stream, head, parsed, target, now, version, handler)
        if self.tracer is not None:
            from_sidecar = head.peer is not None
            call.trace = self.tracer.start(parsed.forward, parsed.path, self.direction, from_sidecar)
        if deadline is not None:
            call.timer = (
                self.loop.call_at(deadline, call.on_deadline)
                if self.clock == self.loop.time
                else self.loop.call_later(deadline - now, call.on_deadline)
            )
        call.begin(target, end_stream)

    def _refuse(self, stream: Stream, head: CallHead, parsed: ParsedRequest, exc: MeshError) -> None:
        """The chain decided the call fails: a Trailers-Only status, counted, never forwarded."""
        conn = stream.conn
        assert conn is not None
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
        trace = None
        if self.tracer is not None:  # a refused call is a span too (status set, no upstream)
            from_sidecar = head.peer is not None
            trace = self.tracer.start(parsed.forward, parsed.path, self.direction, from_sidecar)
            if trace is not None:
                trace.end(code)
        if self.access_log is not None:
            self.access_log.record(
                head.headers if trace is None else trace.headers,
                self.direction,
                self.source if head.peer is None else head.peer,
                head.service,
                parsed.path_bytes,
                code,
                0.0,
                stream.received,
                0,
                "",
                "fault_abort" if isinstance(exc, FaultAbort) else "refused",
            )

    async def drain(self, timeout: float) -> None:
        """GOAWAY every connection and wait (up to timeout) for their calls to finish."""
        waits = [conn.drain() for conn in list(self.connections)]
        if waits:
            done, _ = await asyncio.wait(waits, timeout=timeout)
            if len(done) < len(waits):
                for conn in list(self.connections):
                    conn.abort()  # calls still running after the drain timeout are cut
