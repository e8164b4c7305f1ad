"""Active health checks of remote endpoints (DestinationRule `healthCheck`, mesh-native).

Every `interval` the sidecar asks each endpoint of a cluster with a `healthCheck`
`grpc.health.v1.Health/Check` over the same mutual-TLS pool its calls use, with the service's
name as `:authority`: the endpoint's sidecar relays the check to its app like any call. SERVING
is a pass; NOT_SERVING, a timeout, a failed connection or any other error status is a failure
(UNIMPLEMENTED, an app without the health service, passes: it cannot say). After
`unhealthyThreshold` failures in a row an endpoint is unhealthy and gets no new calls; after
`healthyThreshold` passes in a row it is healthy again. Endpoints start healthy: the control
plane lists only instances whose app reported SERVING (sidecar/app_health.py, the local side).

So an app that turns NOT_SERVING to shut down gracefully is drained: callers stop sending it
new calls within `interval * unhealthyThreshold`, and the calls in flight finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from sidecar.config import Address
from sidecar.grpc_wire import Code, decode_message, format_timeout, status_of
from sidecar.h2.hpack_codec import Header, HeaderList
from sidecar.h2.stream import Stream
from sidecar.pool import Pools, UpstreamPool
from sidecar.tasks import cancel_all

log = logging.getLogger(__name__)

CHECK_PATH = b"/grpc.health.v1.Health/Check"


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    interval: float = 5.0
    timeout: float = 1.0
    unhealthy_threshold: int = 2
    healthy_threshold: int = 1
    service: str = ""  # the grpc.health.v1 service asked about; "": the server as a whole


class EndpointHealth:
    """One endpoint's check results and whether it is healthy (no I/O: `record` each result)."""

    __slots__ = ("checks", "config", "failures_in_row", "healthy", "last", "passes_in_row")

    def __init__(self, config: HealthCheckConfig) -> None:
        self.config = config
        self.healthy = True
        self.passes_in_row = 0
        self.failures_in_row = 0
        self.checks = 0
        self.last = ""  # what the last check found

    def record(self, passed: bool, what: str) -> bool:
        """Count one check's result; True when the endpoint's health changed."""
        self.checks += 1
        self.last = what
        if passed:
            self.passes_in_row += 1
            self.failures_in_row = 0
            if not self.healthy and self.passes_in_row >= self.config.healthy_threshold:
                self.healthy = True
                return True
        else:
            self.failures_in_row += 1
            self.passes_in_row = 0
            if self.healthy and self.failures_in_row >= self.config.unhealthy_threshold:
                self.healthy = False
                return True
        return False

    def as_json(self) -> dict[str, object]:
        return {"healthy": self.healthy, "checks": self.checks, "last_check": self.last}

    def __repr__(self) -> str:
        return f"<EndpointHealth healthy={self.healthy} last={self.last!r}>"


def judge(status: int, message: str, body: bytes) -> tuple[bool, str]:
    """(passed, what it found) for a Check call's status, status message and response DATA."""
    if status == Code.UNIMPLEMENTED:
        return True, "no grpc.health.v1 (taken as serving)"
    if status != Code.OK:
        name = Code(status).name if status in Code._value2member_map_ else str(status)
        return False, f"{name}: {message}" if message else name
    response = health_pb2.HealthCheckResponse()
    try:
        response.ParseFromString(body[5:])  # one message after its 5-byte gRPC prefix
    except DecodeError:
        return False, "unreadable HealthCheckResponse"
    serving = response.status == health_pb2.HealthCheckResponse.SERVING
    return serving, health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


class _CheckCall:
    """One Check call on an upstream pool: what the pool and the connection need of a call
    (UpstreamCall and StreamHandler). The response DATA lands on `sink`, a stream on no
    connection, as a relayed call's would on a downstream stream still waiting."""

    def __init__(self, authority: bytes, service: str, timeout: float) -> None:
        self.cancelled = False
        self.authority = authority
        self.timeout = timeout
        self.up = Stream(self)
        self.sink = Stream(None)
        self.up.peer = self.sink
        body = health_pb2.HealthCheckRequest(service=service).SerializeToString()
        message = b"\0" + len(body).to_bytes(4, "big") + body
        self.up.pending.append(message)
        self.up.pending_bytes = len(message)
        self.up.end_queued = True
        self.done: asyncio.Future[tuple[int, str, bytes]] = asyncio.get_running_loop().create_future()

    def request_headers(self) -> list[Header]:
        return [
            (b":method", b"POST", False),
            (b":scheme", b"https", False),
            (b":path", CHECK_PATH, False),
            (b":authority", self.authority, False),
            (b"content-type", b"application/grpc", False),
            (b"te", b"trailers", False),
            (b"grpc-timeout", format_timeout(self.timeout), False),
        ]

    def _finish(self, status: int, message: str) -> None:
        if self.done.done():
            return
        body = b"".join(self.sink.pending)
        conn = self.up.conn
        if conn is not None and body:
            conn.credit(None, len(body))  # nobody relays it on: give the window back
        self.done.set_result((status, message, body))

    def on_headers(self, stream: Stream, headers: HeaderList, end_stream: bool) -> None:
        if end_stream:
            message = next((decode_message(v) for n, v, _ in headers if n == b"grpc-message"), "")
            self._finish(status_of(headers), message)

    def on_reset(self, stream: Stream, code: int) -> None:
        self._finish(Code.UNAVAILABLE, "connection failed or stream reset")

    def on_oversized(self, stream: Stream, length: int) -> None:
        self._finish(Code.RESOURCE_EXHAUSTED, "response too large")

    def cancel(self) -> None:
        self.cancelled = True
        conn = self.up.conn
        if conn is not None:
            conn.reset(self.up, 0x8)  # CANCEL


async def check(pool: UpstreamPool, authority: bytes, config: HealthCheckConfig) -> tuple[bool, str]:
    """One health check of the endpoint behind `pool`."""
    call = _CheckCall(authority, config.service, config.timeout)
    pool.submit(call.up)
    try:
        status, message, body = await asyncio.wait_for(call.done, config.timeout)
    except TimeoutError:
        call.cancel()
        return False, f"no answer within {config.timeout:g}s"
    return judge(status, message, body)


CheckKey = tuple[Address, str, HealthCheckConfig]  # (endpoint, its service, the config)


class HealthCheckers:
    """One checking task per (endpoint address, service, config) some cluster wants, started
    once the sidecar runs; `version` changes whenever an endpoint's health does."""

    def __init__(self, pools: Pools) -> None:
        self.pools = pools
        self.health: dict[CheckKey, EndpointHealth] = {}
        self.version = 0
        self._tasks: dict[CheckKey, asyncio.Task[None]] = {}
        self._running = False

    def sync(self, wanted: Iterable[CheckKey]) -> None:
        keys = set(wanted)
        for key in list(self.health):
            if key not in keys:
                del self.health[key]
                task = self._tasks.pop(key, None)
                if task is not None:
                    task.cancel()
        for key in keys:
            if key not in self.health:
                self.health[key] = EndpointHealth(key[2])
                if self._running:
                    self._start(key)
        self.version += 1  # endpoints that left may have been unhealthy

    def unhealthy(self, key: CheckKey) -> bool:
        health = self.health.get(key)
        return health is not None and not health.healthy

    def start(self) -> None:
        self._running = True
        for key in self.health:
            if key not in self._tasks:
                self._start(key)

    def _start(self, key: CheckKey) -> None:
        self._tasks[key] = asyncio.get_running_loop().create_task(
            self._run(key), name=f"health-check {key[0]}"
        )

    async def _run(self, key: CheckKey) -> None:
        address, service, config = key
        pool = self.pools.get(address, secure=True)
        authority = service.encode()
        while True:
            await asyncio.sleep(config.interval)
            health = self.health.get(key)
            if health is None:
                return
            passed, what = await check(pool, authority, config)
            if health.record(passed, what):
                self.version += 1
                state = "healthy again" if health.healthy else "unhealthy"
                log.warning("endpoint %s of %s is %s: %s", address, service, state, what)

    async def stop(self) -> None:
        self._running = False
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await cancel_all(tasks)
