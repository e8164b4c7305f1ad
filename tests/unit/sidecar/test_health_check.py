"""Active health checks (sidecar/health_check.py): thresholds, how each answer is judged, and
real Check calls over the sidecar's own HTTP/2 pool to a grpc.aio server on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sidecar.config import Address
from sidecar.grpc_wire import Code
from sidecar.h2.stream import Limits
from sidecar.health_check import EndpointHealth, HealthCheckConfig, check, judge
from sidecar.pool import UpstreamPool

CONFIG = HealthCheckConfig(interval=1.0, timeout=1.0, unhealthy_threshold=2, healthy_threshold=2)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_thresholds_decide_when_health_changes() -> None:
    health_ = EndpointHealth(CONFIG)
    assert health_.healthy  # endpoints start healthy: the registry lists serving ones only
    assert not health_.record(False, "NOT_SERVING")
    assert health_.healthy
    assert not health_.record(True, "SERVING")  # a pass breaks the run of failures
    assert not health_.record(False, "NOT_SERVING")
    assert health_.record(False, "UNAVAILABLE")
    assert not health_.healthy
    assert not health_.record(True, "SERVING")
    assert not health_.record(False, "NOT_SERVING")
    assert not health_.record(True, "SERVING")
    assert health_.record(True, "SERVING")
    assert health_.healthy
    assert health_.as_json() == {"healthy": True, "checks": 8, "last_check": "SERVING"}


def response(status: int) -> bytes:
    body = health_pb2.HealthCheckResponse(status=status).SerializeToString()  # type: ignore[arg-type]
    return b"\0" + len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize(
    ("status", "message", "body", "expected"),
    [
        (Code.OK, "", response(health_pb2.HealthCheckResponse.SERVING), (True, "SERVING")),
        (Code.OK, "", response(health_pb2.HealthCheckResponse.NOT_SERVING), (False, "NOT_SERVING")),
        (Code.OK, "", response(health_pb2.HealthCheckResponse.SERVICE_UNKNOWN), (False, "SERVICE_UNKNOWN")),
        (Code.OK, "", b"\0\0\0\0\x02\xff\xff", (False, "unreadable HealthCheckResponse")),
        (Code.NOT_FOUND, "unknown service", b"", (False, "NOT_FOUND: unknown service")),
        (Code.UNAVAILABLE, "", b"", (False, "UNAVAILABLE")),
        (Code.PERMISSION_DENIED, "denied by policy", b"", (False, "PERMISSION_DENIED: denied by policy")),
        (Code.UNIMPLEMENTED, "", b"", (True, "no grpc.health.v1 (taken as serving)")),
    ],
)
def test_judge(status: int, message: str, body: bytes, expected: tuple[bool, str]) -> None:
    assert judge(status, message, body) == expected


@asynccontextmanager
async def health_server() -> AsyncIterator[tuple[Address, health.aio.HealthServicer, grpc.aio.Server]]:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Address("127.0.0.1", port), servicer, server
    finally:
        await server.stop(None)


def test_check_calls_grpc_health_over_the_pool() -> None:
    async def scenario() -> None:
        async with health_server() as (address, servicer, server):
            pool = UpstreamPool(address, ssl_context=None, limits=Limits())
            try:
                assert await check(pool, b"echo", CONFIG) == (True, "SERVING")
                await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
                assert await check(pool, b"echo", CONFIG) == (False, "NOT_SERVING")
                named = HealthCheckConfig(service="test.Echo")
                assert await check(pool, b"echo", named) == (False, "NOT_FOUND")  # no such health service
                await servicer.set("test.Echo", health_pb2.HealthCheckResponse.SERVING)
                assert await check(pool, b"echo", named) == (True, "SERVING")
                for _ in range(50):  # each check's response DATA is credited back
                    await check(pool, b"echo", named)
                assert pool.in_flight() == 0
                await server.stop(None)
                passed, what = await check(pool, b"echo", CONFIG)
                assert not passed and what.startswith("UNAVAILABLE")
            finally:
                await pool.close()

    run(scenario)


def test_an_endpoint_that_never_answers_fails_at_the_timeout() -> None:
    async def scenario() -> None:
        silent = socket.create_server(("127.0.0.1", 0))  # accepts, never speaks HTTP/2
        try:
            port = silent.getsockname()[1]
            pool = UpstreamPool(Address("127.0.0.1", port), ssl_context=None, limits=Limits())
            config = HealthCheckConfig(timeout=0.05)
            try:
                assert await check(pool, b"echo", config) == (False, "no answer within 0.05s")
            finally:
                await pool.close()
        finally:
            silent.close()

    run(scenario)
