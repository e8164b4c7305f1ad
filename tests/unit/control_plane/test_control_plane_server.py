"""The assembled control plane in this process, on loopback ports: reflection and health without
a token, the policy API with one, discovery without one (sidecar mTLS identity comes later), and
a change applied over REST reaching a connected sidecar's stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from mesh.v1 import discovery_pb2, discovery_pb2_grpc, policy_pb2, policy_pb2_grpc

from control_plane.auth import Role, load_signing_key, mint_token
from control_plane.server import (
    Addresses,
    ControlPlane,
    StartError,
    join_listen,
    split_listen,
    write_ready_file,
)
from tests.support.policy_api import virtual_service

STEP_TIMEOUT = 10.0


@asynccontextmanager
async def running(data_dir: Path) -> AsyncIterator[tuple[ControlPlane, Addresses]]:
    control_plane = ControlPlane(
        data_dir, grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0", debounce=0.0, warmup=0.0
    )
    addresses = await control_plane.start()
    try:
        yield control_plane, addresses
    finally:
        await control_plane.stop(0)


def admin_token(data_dir: Path, role: Role = Role.ADMIN) -> str:
    return mint_token(load_signing_key(data_dir), role=role, subject="test", now=datetime.now(UTC))


async def list_services(channel: Any) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    response = await call.read()
    await call.done_writing()
    return {service.name for service in response.list_services_response.service}


def test_one_server_carries_discovery_policy_health_and_reflection(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as (_, addresses), grpc.aio.insecure_channel(addresses.grpc) as channel:
            assert {
                "mesh.v1.PolicyService",
                "mesh.v1.DiscoveryService",
                "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection",
            } <= await list_services(channel)
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "mesh.v1.PolicyService", "mesh.v1.DiscoveryService"):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

            policy = policy_pb2_grpc.PolicyServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await policy.ListResources(policy_pb2.ListResourcesRequest())
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
            metadata = (("authorization", f"Bearer {admin_token(tmp_path, Role.READ)}"),)
            assert (
                list(
                    (
                        await policy.ListResources(policy_pb2.ListResourcesRequest(), metadata=metadata)
                    ).resources
                )
                == []
            )

    asyncio.run(main())


def test_a_rest_apply_reaches_a_connected_sidecar(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            running(tmp_path) as (control_plane, addresses),
            grpc.aio.insecure_channel(addresses.grpc) as channel,
        ):
            stream = discovery_pb2_grpc.DiscoveryServiceStub(channel).StreamSnapshots()
            hello = discovery_pb2.Hello(
                node_id="orders-1",
                service="orders",
                inbound_address="127.0.0.1:15006",
                dependencies=["users"],
            )
            await stream.write(discovery_pb2.StreamSnapshotsRequest(hello=hello))
            first = (await asyncio.wait_for(stream.read(), STEP_TIMEOUT)).snapshot
            assert list(first.policies) == []
            await stream.write(
                discovery_pb2.StreamSnapshotsRequest(ack=discovery_pb2.Ack(version=first.version))
            )

            headers = {"Authorization": f"Bearer {admin_token(tmp_path)}"}
            async with aiohttp.ClientSession(f"http://{addresses.http}") as http:
                async with http.post(
                    "/api/v1/apply", json={"documents": [virtual_service()]}, headers=headers
                ) as r:
                    assert r.status == 200, await r.text()
                pushed = (await asyncio.wait_for(stream.read(), STEP_TIMEOUT)).snapshot
                assert [(p.kind, p.name, p.resource_version) for p in pushed.policies] == [
                    ("VirtualService", "users", 1)
                ]
                assert pushed.store_revision == 1
                await stream.write(
                    discovery_pb2.StreamSnapshotsRequest(ack=discovery_pb2.Ack(version=pushed.version))
                )
                assert control_plane.discovery is not None
                assert await control_plane.discovery.wait_for_revision(1, STEP_TIMEOUT)
                async with http.get("/api/v1/sidecars", headers=headers) as r:
                    status = await r.json()
                assert status["storeRevision"] == "1"
                assert status["sidecars"][0]["appliedVersion"] == pushed.version
                assert status["sidecars"][0]["state"] == "ACK"
            await stream.done_writing()

    asyncio.run(main())


def test_a_taken_port_is_a_start_error_and_nothing_is_left_running(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path / "a") as (_, addresses):
            second = ControlPlane(tmp_path / "b", grpc_listen="127.0.0.1:0", http_listen=addresses.http)
            with pytest.raises(StartError, match="HTTP: cannot listen"):
                await second.start()
            await second.stop(0)
            third = ControlPlane(tmp_path / "c", grpc_listen=addresses.grpc, http_listen="127.0.0.1:0")
            with pytest.raises(StartError, match="gRPC: cannot listen"):
                await third.start()
            await third.stop(0)

    asyncio.run(main())


def test_listen_addresses() -> None:
    assert split_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert split_listen("[::1]:15010") == ("::1", 15010)
    assert join_listen("::1", 15010) == "[::1]:15010"
    for bad in ("15010", "host:", ":80", "host:99999", "host:http"):
        with pytest.raises(StartError, match="expected host:port"):
            split_listen(bad)


def test_the_ready_file_is_json(tmp_path: Path) -> None:
    path = tmp_path / "ready.json"
    write_ready_file(path, {"grpc": "127.0.0.1:1", "http": "127.0.0.1:2", "pid": 7})
    assert json.loads(path.read_text()) == {"grpc": "127.0.0.1:1", "http": "127.0.0.1:2", "pid": 7}
    assert [p.name for p in tmp_path.iterdir()] == ["ready.json"]
