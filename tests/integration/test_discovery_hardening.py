"""Discovery under things going wrong, in one event loop against a real grpc.aio server on loopback:
a silently dead path (keepalive, both ends), a store that fails or is slow (read off the event
loop, once per pass, retried), Acks of versions never sent, two sidecars claiming one node id or
one inbound address, two services serving one gRPC service, a stream without a Hello, and a new
endpoint whose app has not answered its health check yet.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from mesh.v1 import discovery_pb2, discovery_pb2_grpc

from control_plane.discovery import ServerKeepalive
from control_plane.registry import AckState
from control_plane.resources import StoreError
from control_plane.server import ControlPlane
from sidecar.discovery import Backoff, Discovered, DiscoveryClient, Keepalive
from tests.support.discovery import RunningControlPlane, eventually, start_control_plane
from tests.support.holding_proxy import HoldingProxy
from tests.support.memory_store import MemoryStore

pytestmark = pytest.mark.integration

DEADLINE = 10.0
USERS_ID = "spiffe://cluster.local/ns/default/sa/users"
VS_USERS = {"hosts": ["users"], "http": [{"route": [{"destination": {"host": "users"}}]}]}
# Short keepalive for the tests: a dead path is noticed within about a second.
FAST_KEEPALIVE = Keepalive(time=0.2, timeout=0.5)
FAST_SERVER_KEEPALIVE = ServerKeepalive(time=0.2, timeout=0.5, min_client_ping_interval=0.1)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


def hello(node_id: str, service: str = "users", inbound: str = "", **fields: Any) -> discovery_pb2.Hello:
    message: dict[str, Any] = {
        "node_id": node_id,
        "service": service,
        "namespace": "default",
        "labels": {"version": "v1"},
        "inbound_address": inbound,
        "identity": f"spiffe://cluster.local/ns/default/sa/{service}",
    }
    message.update(fields)
    return discovery_pb2.Hello(**message)


class Raw:
    """A discovery stream driven by hand (no keepalive, no automatic Acks)."""

    def __init__(self, channel: Any) -> None:
        self.call = discovery_pb2_grpc.DiscoveryServiceStub(channel).StreamSnapshots()
        self.details = ""

    async def send(self, **message: Any) -> None:
        await self.call.write(discovery_pb2.StreamSnapshotsRequest(**message))

    async def snapshot(self) -> discovery_pb2.Snapshot:
        response = await asyncio.wait_for(self.call.read(), DEADLINE)
        assert response is not grpc.aio.EOF, "the stream ended"
        snapshot: discovery_pb2.Snapshot = response.snapshot
        return snapshot

    async def ack(self, version: str) -> None:
        await self.send(ack=discovery_pb2.Ack(version=version))

    async def status(self) -> grpc.StatusCode:
        """Read to the end of the stream, which must end in an error; its code (details kept)."""
        try:
            while await asyncio.wait_for(self.call.read(), DEADLINE) is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError as exc:
            self.details = exc.details() or ""
            code: grpc.StatusCode = exc.code()
            return code
        raise AssertionError("the stream ended without an error")


class Node:
    """A DiscoveryClient that records what it applied."""

    def __init__(
        self,
        target: str,
        message: discovery_pb2.Hello,
        *,
        serving: bool | None = True,
        keepalive: Keepalive | None = None,
    ) -> None:
        self.applied: list[Discovered] = []
        self.client = DiscoveryClient(
            target,
            message,
            self.applied.append,
            backoff=Backoff(initial=0.02, maximum=0.2),
            keepalive=keepalive,
        )
        if serving is not None and message.inbound_address:
            self.client.report_health(serving)
        self.client.start()

    def labels(self, service: str) -> list[dict[str, str]]:
        """The labels of the endpoints of `service` in the last snapshot applied."""
        if not self.applied or service not in self.applied[-1].services:
            return []
        return [e.labels for e in self.applied[-1].services[service].endpoints]

    def endpoints(self, service: str) -> list[str] | None:
        """The endpoints of `service` in the last snapshot applied; None if it lists no such service."""
        if not self.applied or service not in self.applied[-1].services:
            return None
        return [str(e.address) for e in self.applied[-1].services[service].endpoints]


def all_acked(cp: RunningControlPlane, *nodes: Node) -> bool:
    for n in nodes:
        record = cp.registry.get(n.client.hello.node_id)
        if record is None or not record.connected or record.state is not AckState.ACK:
            return False
        if n.client.applied_version != record.sent_version:
            return False
    return True


@asynccontextmanager
async def control_plane(store: Any = None, **options: Any) -> AsyncIterator[RunningControlPlane]:
    cp = await start_control_plane(store if store is not None else MemoryStore(), **options)
    try:
        yield cp
    finally:
        await cp.stop()


async def stop_all(*nodes: Node) -> None:
    for n in nodes:
        await n.client.stop()


# ---------------------------------------------------------------------------- keepalive


def test_a_sidecar_notices_a_silently_dead_path_to_the_control_plane() -> None:
    async def scenario() -> None:
        # The control plane allows fast pings but sends none itself: only the sidecar can notice.
        async with control_plane(
            keepalive=ServerKeepalive(time=3600, timeout=20, min_client_ping_interval=0.1)
        ) as cp:
            proxy = HoldingProxy(cp.address, release_after=0, fallback=0)
            node = Node(proxy.address, hello("caller-1", "caller"), keepalive=FAST_KEEPALIVE)
            try:
                await eventually(lambda: all_acked(cp, node), DEADLINE, "the first snapshot acked")
                assert node.client.connects == 1
                proxy.stall()
                await eventually(
                    lambda: not node.client.connected and node.client.last_error.startswith("UNAVAILABLE"),
                    DEADLINE,
                    "the sidecar to notice",
                )
                record = cp.registry.get("caller-1")
                assert record is not None and record.connected  # the control plane has not noticed
            finally:
                await stop_all(node)
                proxy.close()

    run(scenario)


def test_the_control_plane_notices_a_silently_dead_sidecar(tmp_path: Path) -> None:
    async def scenario() -> None:
        # The real control plane, keepalive configured as meshctl's is but faster; a sidecar that
        # never pings (a raw stream): only the control plane's own pings can notice it is gone.
        control = ControlPlane(
            tmp_path,
            grpc_listen="127.0.0.1:0",
            http_listen="127.0.0.1:0",
            debounce=0.0,
            warmup=0.0,
            keepalive=FAST_SERVER_KEEPALIVE,
        )
        addresses = await control.start()
        proxy = HoldingProxy(addresses.grpc, release_after=0, fallback=0)
        try:
            async with grpc.aio.insecure_channel(proxy.address) as channel:
                stream = Raw(channel)
                await stream.send(hello=hello("users-1", inbound="127.0.0.1:20001"))
                await stream.ack((await stream.snapshot()).version)
                discovery = control.discovery
                assert discovery is not None

                def connected() -> bool:
                    record = discovery.registry.get("users-1")
                    return record is not None and record.connected

                await eventually(connected, DEADLINE, "the sidecar registered")
                proxy.stall()
                await eventually(lambda: not connected(), DEADLINE, "the control plane to notice")
                stream.call.cancel()
        finally:
            proxy.close()
            await control.stop(0)

    run(scenario)


def test_the_default_keepalives_fit_together() -> None:
    client, server = Keepalive(), ServerKeepalive()
    # The control plane must allow the sidecars' pings, or it closes their connections.
    assert server.min_client_ping_interval <= client.time
    client_options = dict(client.channel_options())
    assert client_options == {
        "grpc.keepalive_time_ms": 10_000,
        "grpc.keepalive_timeout_ms": 5_000,
        "grpc.http2.ping_timeout_ms": 5_000,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_pings_without_data": 0,
    }
    server_options = dict(server.server_options())
    assert (
        server_options["grpc.http2.min_ping_interval_without_data_ms"]
        <= client_options["grpc.keepalive_time_ms"]
    )
    assert server_options["grpc.keepalive_permit_without_calls"] == 1
    assert server_options["grpc.keepalive_time_ms"] == 10_000
    assert server_options["grpc.keepalive_timeout_ms"] == 5_000


# ---------------------------------------------------------------------------- the store


class WatchedStore(MemoryStore):
    """Records which thread reads it, how often, and can fail the next reads."""

    def __init__(self) -> None:
        super().__init__()
        self.reader_threads: set[int] = set()
        self.revision_reads = 0
        self.fail_reads = 0

    def revision(self) -> int:
        self.reader_threads.add(threading.get_ident())
        self.revision_reads += 1
        if self.fail_reads > 0:
            self.fail_reads -= 1
            raise StoreError("disk I/O error (injected)")
        return super().revision()


def test_the_store_is_read_off_the_event_loop_once_per_pass() -> None:
    async def scenario() -> None:
        store = WatchedStore()
        async with control_plane(store) as cp:
            nodes = [
                Node(cp.address, hello(f"caller-{i}", "caller", dependencies=["users"])) for i in range(5)
            ]
            try:
                await eventually(lambda: all_acked(cp, *nodes), DEADLINE, "first snapshots acked")
                store.put("VirtualService", "default", "users", VS_USERS)
                reads = store.revision_reads
                assert await cp.servicer.push_all() == 5
                assert store.revision_reads == reads + 1  # one read for the five sidecars
                assert threading.get_ident() not in store.reader_threads  # never on the loop
                await eventually(lambda: all_acked(cp, *nodes), DEADLINE, "the change acked")
                assert {n.applied[-1].store_revision for n in nodes} == {1}
            finally:
                await stop_all(*nodes)

    run(scenario)


def test_a_failed_push_pass_is_retried_and_the_change_is_not_lost() -> None:
    async def scenario() -> None:
        store = WatchedStore()
        async with control_plane(store, retry_initial=0.02) as cp:
            node = Node(cp.address, hello("caller-1", "caller", dependencies=["users"]))
            try:
                await eventually(lambda: all_acked(cp, node), DEADLINE, "first snapshot acked")
                store.put("VirtualService", "default", "users", VS_USERS)
                store.fail_reads = 2  # the next two passes fail
                cp.servicer.notify_changed()
                assert await cp.servicer.wait_for_revision(1, DEADLINE)
                assert cp.servicer.failed_passes == 2
                assert [p.name for p in node.applied[-1].policies] == ["users"]
            finally:
                await stop_all(node)

    run(scenario)


def test_a_new_stream_whose_first_read_fails_still_gets_its_snapshot() -> None:
    async def scenario() -> None:
        store = WatchedStore()
        async with control_plane(store, retry_initial=0.02) as cp:
            store.fail_reads = 1
            node = Node(cp.address, hello("caller-1", "caller"))
            try:
                await eventually(lambda: all_acked(cp, node), DEADLINE, "the first snapshot acked")
                assert node.client.connects == 1
                assert node.client.last_error == ""  # on its first stream, which never broke
            finally:
                await stop_all(node)

    run(scenario)


# ---------------------------------------------------------------------------- acks


def test_an_ack_of_a_version_never_sent_is_ignored() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        async with control_plane(store) as cp, grpc.aio.insecure_channel(cp.address) as channel:
            stream = Raw(channel)
            await stream.send(hello=hello("caller-1", "caller", dependencies=["users"]))
            first = await stream.snapshot()
            await stream.ack(first.version)
            record = cp.registry.get("caller-1")
            assert record is not None
            await eventually(lambda: record.state is AckState.ACK, DEADLINE, "the real ack")
            store.put("VirtualService", "default", "users", VS_USERS)

            # Claims to run revision 1 (and a version from far ahead) before being sent either.
            await stream.ack(f"1-{first.version.partition('-')[2]}")
            await stream.ack("999-abcdef012345")
            await stream.send(nack=discovery_pb2.Nack(version="998-abcdef012345", reason="made up"))
            # Messages are handled in order: once this one is, so were the ones before it.
            await stream.send(health=discovery_pb2.HealthReport(serving=False))
            await eventually(lambda: not record.serving, DEADLINE, "the messages handled")
            assert (record.applied_version, record.applied_revision) == (first.version, 0)
            assert record.state is AckState.ACK
            assert not cp.servicer.caught_up(1)

            cp.servicer.notify_changed()
            pushed = await stream.snapshot()  # it calls users: the VirtualService is for it
            assert pushed.store_revision == 1
            await stream.ack(pushed.version)
            assert await cp.servicer.wait_for_revision(1, DEADLINE)
            stream.call.cancel()

    run(scenario)


# ---------------------------------------------------------------------------- who is who


def test_a_node_id_in_use_by_another_registration_is_already_exists() -> None:
    async def scenario() -> None:
        async with control_plane() as cp, grpc.aio.insecure_channel(cp.address) as channel:
            first = Raw(channel)
            await first.send(hello=hello("users-1", inbound="127.0.0.1:20001"))
            await first.snapshot()

            impostor = Raw(channel)
            await impostor.send(hello=hello("users-1", inbound="127.0.0.1:20666"))
            assert await impostor.status() == grpc.StatusCode.ALREADY_EXISTS
            assert "users-1" in impostor.details
            record = cp.registry.get("users-1")
            assert record is not None and record.connected and record.inbound_address == "127.0.0.1:20001"

            # The same registration again is the sidecar reconnecting: it takes over.
            again = Raw(channel)
            await again.send(hello=hello("users-1", inbound="127.0.0.1:20001"))
            await again.snapshot()
            assert await first.call.read() is grpc.aio.EOF  # the old stream is ended
            again.call.cancel()

    run(scenario)


def test_no_hello_within_the_timeout_is_deadline_exceeded() -> None:
    async def scenario() -> None:
        async with (
            control_plane(hello_timeout=0.2) as cp,
            grpc.aio.insecure_channel(cp.address) as channel,
        ):
            silent = Raw(channel)
            assert await silent.status() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "no hello" in silent.details
            assert cp.registry.sidecars() == []

    run(scenario)


def test_a_sidecar_restarted_on_its_port_under_a_new_node_id_makes_nobody_nack() -> None:
    async def scenario() -> None:
        async with control_plane(grace=30.0) as cp:
            old = Node(cp.address, hello("users-100", inbound="127.0.0.1:20001"))
            caller = Node(cp.address, hello("caller-1", "caller", dependencies=["users"]))
            new: Node | None = None
            try:
                await eventually(
                    lambda: caller.endpoints("users") == ["127.0.0.1:20001"], DEADLINE, "the endpoint"
                )
                task = old.client._task
                assert task is not None
                task.cancel()  # killed -9: the stream breaks, the record stays for the grace
                await eventually(
                    lambda: not cp.registry.get("users-100").connected,  # type: ignore[union-attr]
                    DEADLINE,
                    "the old stream's end",
                )
                new = Node(
                    cp.address, hello("users-200", inbound="127.0.0.1:20001", labels={"version": "v2"})
                )
                await eventually(
                    lambda: all_acked(cp, caller, new) and caller.labels("users") == [{"version": "v2"}],
                    DEADLINE,
                    "the caller to ack the restarted endpoint",
                )
                assert caller.endpoints("users") == ["127.0.0.1:20001"]
                assert caller.client.last_nack is None
            finally:
                await stop_all(caller, *([new] if new else []))

    run(scenario)


def test_two_services_serving_one_grpc_service_make_nobody_nack() -> None:
    async def scenario() -> None:
        health = "grpc.health.v1.Health"
        async with control_plane() as cp:
            users = Node(
                cp.address,
                hello("users-1", inbound="127.0.0.1:20001", grpc_services=["demo.v1.Users", health]),
            )
            orders = Node(
                cp.address,
                hello(
                    "orders-1", "orders", inbound="127.0.0.1:20002", grpc_services=["demo.v1.Orders", health]
                ),
            )
            caller = Node(cp.address, hello("caller-1", "caller"))
            nodes = (users, orders, caller)
            try:
                await eventually(
                    lambda: (
                        all_acked(cp, *nodes)
                        and caller.endpoints("users") == ["127.0.0.1:20001"]
                        and caller.endpoints("orders") == ["127.0.0.1:20002"]
                    ),
                    DEADLINE,
                    "every sidecar to ack both endpoints",
                )
                assert all(n.client.last_nack is None for n in nodes)
                discovered = caller.applied[-1]
                assert discovered.ambiguous_grpc_services == {health: ("orders", "users")}
                assert discovered.services["users"].grpc_services == ("demo.v1.Users", health)
            finally:
                await stop_all(*nodes)

    run(scenario)


# ---------------------------------------------------------------------------- health


def test_a_new_endpoint_serves_only_once_its_app_answered() -> None:
    async def scenario() -> None:
        async with control_plane() as cp:
            users = Node(cp.address, hello("users-1", inbound="127.0.0.1:20001"), serving=None)
            # No dependencies: it is sent every service the registry knows, and users once registered.
            caller = Node(cp.address, hello("caller-1", "caller"))
            try:
                # Registered, but its app has not answered yet: a known service without endpoints.
                await eventually(
                    lambda: all_acked(cp, users, caller) and caller.endpoints("users") == [],
                    DEADLINE,
                    "users known without endpoints",
                )
                assert users.endpoints("users") == []
                users.client.report_health(True)  # the app's first answer
                await eventually(
                    lambda: caller.endpoints("users") == ["127.0.0.1:20001"], DEADLINE, "the endpoint"
                )
                # The client-only caller never reported any health and was served all along.
                assert caller.client.serving is None and caller.client.last_nack is None
            finally:
                await stop_all(users, caller)

    run(scenario)
