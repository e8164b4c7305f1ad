"""The gRPC admin service in process: the views it is given, a sidecar without TLS (no
certificates: NOT_FOUND, as HTTP /certs' 404), and a port it cannot bind."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import grpc
import pytest
from mesh.v1 import admin_pb2, admin_pb2_grpc

from sidecar.admin import NO_CERTS, AdminViews
from sidecar.admin_grpc import start_admin_server
from sidecar.config import Address

VIEWS = AdminViews(
    is_ready=lambda: False,
    config_dump=lambda: {"version": "", "listeners": {"admin": "127.0.0.1:1"}, "draining": True},
    stats=lambda: {"calls": {}, "counters": {"outbound.not_grpc": 2}},
)


def _run(scenario: Callable[[admin_pb2_grpc.SidecarAdminStub], Awaitable[None]]) -> None:
    async def main() -> None:
        server, address = await start_admin_server(VIEWS, Address("127.0.0.1", 0))
        try:
            async with grpc.aio.insecure_channel(address) as ch:
                await scenario(admin_pb2_grpc.SidecarAdminStub(ch))
        finally:
            await server.stop(None)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_answers_with_the_views() -> None:
    async def scenario(stub: admin_pb2_grpc.SidecarAdminStub) -> None:
        assert (await stub.Ready(admin_pb2.ReadyRequest())).ready is False
        dump = (await stub.GetConfigDump(admin_pb2.GetConfigDumpRequest())).config_dump
        assert dump["draining"] is True
        assert dump["listeners"]["admin"] == "127.0.0.1:1"
        stats = (await stub.GetStats(admin_pb2.GetStatsRequest())).stats
        assert stats["counters"]["outbound.not_grpc"] == 2
        assert list((await stub.GetClusters(admin_pb2.GetClustersRequest())).clusters) == []

    _run(scenario)


def test_no_tls_means_no_certificates_and_no_metrics_means_unimplemented() -> None:
    async def scenario(stub: admin_pb2_grpc.SidecarAdminStub) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as certs:
            await stub.GetCerts(admin_pb2.GetCertsRequest())
        assert certs.value.code() == grpc.StatusCode.NOT_FOUND
        assert certs.value.details() == NO_CERTS
        with pytest.raises(grpc.aio.AioRpcError) as metrics:
            await stub.GetMetrics(admin_pb2.GetMetricsRequest())
        assert metrics.value.code() == grpc.StatusCode.UNIMPLEMENTED

    _run(scenario)


def test_a_port_in_use_is_an_error_naming_the_listener() -> None:
    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(OSError, match=r"listeners\.admin_grpc: cannot listen on 127\.0\.0\.1:"):
                await start_admin_server(VIEWS, Address("127.0.0.1", port))

    asyncio.run(main())
