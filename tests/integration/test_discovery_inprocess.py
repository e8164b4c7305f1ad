"""Discovery end to end inside one event loop: the control plane's DiscoveryServicer on a grpc.aio
server on loopback, a SqliteStore, and sidecars' DiscoveryClients — bare ones, or inside real
Sidecar objects relaying calls to an echo app over mutual TLS.

    Hello → first snapshot → Ack (in the registry); a store change → new snapshots for the sidecars
    it concerns only, all Ack; a snapshot a sidecar cannot apply → Nack with the reason, the old
    snapshot keeps relaying; the control plane goes away → calls keep working; it comes back →
    the sidecars reconnect and get the current snapshot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from mesh.v1 import discovery_pb2

from control_plane.ca import CertificateAuthority, issue_workload_files
from control_plane.registry import AckState, Registration, Registry
from control_plane.resources import Change, ResourceKey
from control_plane.snapshots import Resources, SnapshotBuilder
from control_plane.spiffe import SpiffeId
from control_plane.sqlite_store import SqliteStore
from sidecar.app import Sidecar
from sidecar.config import parse_config
from sidecar.discovery import Backoff, Discovered, DiscoveryClient
from tests.support.discovery import RunningControlPlane, eventually, start_control_plane
from tests.support.echo_server import SERVER_OPTIONS, Echo

pytestmark = pytest.mark.integration

DEADLINE = 10.0
NOW = datetime(2026, 1, 1, tzinfo=UTC)
VS_ECHO = {"hosts": ["echo"], "http": [{"timeout": "2s", "route": [{"destination": {"host": "echo"}}]}]}


def fast_backoff() -> Backoff:
    return Backoff(initial=0.02, maximum=0.2)


def put(store: SqliteStore, kind: str, name: str, spec: dict[str, Any]) -> int:
    store.apply([Change(ResourceKey(kind, "default", name), spec)], NOW)
    return store.revision()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


# ---------------------------------------------------------------------------- bare clients


@dataclass
class Node:
    client: DiscoveryClient
    applied: list[Discovered]

    @property
    def node_id(self) -> str:
        return str(self.client.hello.node_id)

    @property
    def last(self) -> Discovered:
        return self.applied[-1]

    def endpoints(self, service: str) -> list[str]:
        if not self.applied:
            return []
        entry = self.last.services.get(service)
        return [str(e.address) for e in entry.endpoints] if entry else []


def node(
    cp: RunningControlPlane, node_id: str, service: str, inbound: str = "", deps: tuple[str, ...] = ()
) -> Node:
    applied: list[Discovered] = []
    hello = discovery_pb2.Hello(
        node_id=node_id,
        service=service,
        namespace="default",
        labels={"version": "v1"},
        inbound_address=inbound,
        identity=f"spiffe://cluster.local/ns/default/sa/{service}",
        grpc_services=[f"demo.v1.{service.title()}"] if inbound else [],
        dependencies=deps,
    )
    client = DiscoveryClient(cp.address, hello, applied.append, backoff=fast_backoff())
    if inbound:
        client.report_health(True)  # as a sidecar's AppHealthWatcher does with the app's first answer
    client.start()
    return Node(client, applied)


def acked(registry: Registry, *nodes: Node) -> bool:
    """Every node's latest snapshot is applied and the registry shows its Ack."""
    for n in nodes:
        record = registry.get(n.node_id)
        if record is None or not record.connected or record.state is not AckState.ACK:
            return False
        if n.client.applied_version != record.sent_version:
            return False
    return True


def test_hello_snapshot_ack_then_changes_reach_only_the_sidecars_they_concern(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "store.sqlite3")
        cp = await start_control_plane(store, grace=30.0)
        users = node(cp, "users-1", "users", "127.0.0.1:20001")
        orders = node(cp, "orders-1", "orders", "127.0.0.1:20002", deps=("users",))
        front = node(cp, "front-1", "front", deps=("orders",))  # client-only
        nodes = (users, orders, front)
        try:
            await eventually(
                lambda: (
                    acked(cp.registry, *nodes)
                    and orders.endpoints("users") == ["127.0.0.1:20001"]
                    and front.endpoints("orders") == ["127.0.0.1:20002"]
                    and users.endpoints("orders") == ["127.0.0.1:20002"]
                ),
                DEADLINE,
                "every sidecar registered, each one's snapshot applied and acked",
            )
            assert sorted(front.last.services) == ["orders"]
            assert sorted(users.last.services) == ["orders", "users"]  # no dependencies: everything
            assert orders.last.services["users"].grpc_services == ("demo.v1.Users",)
            record = cp.registry.get("users-1")
            assert record is not None and record.applied_version == users.client.applied_version

            # A policy for "users": the sidecars that call users get it; front (calls orders) does not.
            pushes = {n.node_id: len(n.applied) for n in nodes}
            front_version = front.client.applied_version
            revision = put(store, "VirtualService", "users", {"hosts": ["users"], "http": []})
            cp.servicer.notify_changed()
            assert await cp.servicer.wait_for_revision(revision, DEADLINE)
            await eventually(lambda: acked(cp.registry, *nodes), DEADLINE, "policy change acked")
            assert [p.name for p in users.last.policies] == ["users"]
            assert [p.name for p in orders.last.policies] == ["users"]
            assert len(users.applied) == pushes["users-1"] + 1
            assert len(orders.applied) == pushes["orders-1"] + 1
            assert len(front.applied) == pushes["front-1"]  # nothing was sent to it
            assert front.client.applied_version == front_version
            front_record = cp.registry.get("front-1")
            assert front_record is not None and front_record.applied_revision == revision
            assert cp.registry.get("users-1").applied_revision == revision  # type: ignore[union-attr]

            # A second users instance: the callers of users get two endpoints, front nothing.
            users2 = node(cp, "users-2", "users", "127.0.0.1:20003")
            await eventually(
                lambda: orders.endpoints("users") == ["127.0.0.1:20001", "127.0.0.1:20003"],
                DEADLINE,
                "second users endpoint",
            )
            await eventually(lambda: acked(cp.registry, users, orders, users2), DEADLINE, "acks")
            assert len(front.applied) == pushes["front-1"]

            # It reports its app unhealthy: out of the endpoints at once, and back when healthy.
            users2.client.report_health(False)
            await eventually(
                lambda: orders.endpoints("users") == ["127.0.0.1:20001"], DEADLINE, "unhealthy out"
            )
            users2.client.report_health(True)
            await eventually(lambda: len(orders.endpoints("users")) == 2, DEADLINE, "healthy back")

            # It stops cleanly: it says it no longer serves, so it leaves without waiting for the grace.
            await users2.client.stop()
            await eventually(
                lambda: orders.endpoints("users") == ["127.0.0.1:20001"], DEADLINE, "stopped out"
            )
            record2 = cp.registry.get("users-2")
            assert record2 is not None and not record2.connected
            assert await cp.servicer.wait_for_revision(store.revision(), DEADLINE)
        finally:
            for n in nodes:
                await n.client.stop()
            await cp.stop()
            store.close()

    run(scenario)


def test_a_vanished_sidecar_leaves_after_the_grace(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "store.sqlite3")
        grace = 0.5
        cp = await start_control_plane(store, grace=grace)
        users = node(cp, "users-1", "users", "127.0.0.1:20001")
        caller = node(cp, "caller-1", "caller", deps=("users",))
        try:
            await eventually(lambda: caller.endpoints("users") == ["127.0.0.1:20001"], DEADLINE, "endpoint")
            task = users.client._task
            assert task is not None
            task.cancel()  # the stream just breaks: no health report, no half-close
            await eventually(lambda: not cp.registry.get("users-1").connected, DEADLINE, "disconnect")  # type: ignore[union-attr]
            record = cp.registry.get("users-1")
            assert record is not None and record.disconnected_at is not None
            if cp.registry.clock() - record.disconnected_at < grace / 2:
                assert caller.endpoints("users") == ["127.0.0.1:20001"]  # still within the grace
            await eventually(
                lambda: caller.endpoints("users") == [], DEADLINE, "endpoint gone after the grace"
            )
            assert cp.registry.clock() - record.disconnected_at >= grace
            assert "users" in caller.last.services  # a declared dependency stays known, empty
        finally:
            await caller.client.stop()
            await cp.stop()
            store.close()

    run(scenario)


def test_a_stream_must_open_with_a_hello(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "store.sqlite3")
        cp = await start_control_plane(store)
        try:
            async with grpc.aio.insecure_channel(cp.address) as channel:
                call = channel.stream_stream(
                    "/mesh.v1.DiscoveryService/StreamSnapshots",
                    request_serializer=discovery_pb2.StreamSnapshotsRequest.SerializeToString,
                    response_deserializer=discovery_pb2.StreamSnapshotsResponse.FromString,
                )
                for first, expected in [
                    (
                        discovery_pb2.StreamSnapshotsRequest(ack=discovery_pb2.Ack(version="1-x")),
                        "must be a hello",
                    ),
                    (
                        discovery_pb2.StreamSnapshotsRequest(
                            hello=discovery_pb2.Hello(node_id="n", service="")
                        ),
                        "hello.service: required",
                    ),
                ]:
                    stream = call(iter([first]))
                    with pytest.raises(grpc.aio.AioRpcError) as raised:
                        await stream.read()
                    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert expected in (raised.value.details() or "")
            assert cp.registry.sidecars() == []
        finally:
            await cp.stop()
            store.close()

    run(scenario)


# ---------------------------------------------------------------------------- real sidecars


class CorruptingBuilder(SnapshotBuilder):
    """Builds like the real one, but gives the services in `corrupt` an endpoint with a bad address."""

    def __init__(self) -> None:
        super().__init__()
        self.corrupt: set[str] = set()

    def build(self, record: Any, registry: Registry, resources: Resources) -> discovery_pb2.Snapshot:
        snapshot = super().build(record, registry, resources)
        registration: Registration = getattr(record, "registration", record)
        if registration.service in self.corrupt and snapshot.services:
            corrupted = discovery_pb2.Snapshot()
            corrupted.CopyFrom(snapshot)  # built snapshots are shared between sidecars: never edit one
            corrupted.services[0].endpoints.add(address="not-an-address")
            corrupted.version = snapshot.version + "-corrupt"
            return corrupted
        return snapshot


@dataclass
class Workloads:
    echo: Sidecar
    client: Sidecar
    outbound: str


@asynccontextmanager
async def echo_app() -> AsyncIterator[str]:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((Echo().handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def sidecar(
    root: Path, ca: CertificateAuthority, service: str, cp: RunningControlPlane, **raw: Any
) -> Sidecar:
    files = issue_workload_files(
        ca, SpiffeId("cluster.local", "default", service), root / service, now=datetime.now(UTC)
    )
    config = parse_config(
        {
            "service": service,
            "labels": {"version": "v1"},
            "tls": {"cert": str(files.cert), "key": str(files.key), "ca": str(files.ca)},
            "control_plane": cp.address,
            "drain_seconds": 0.5,
            **raw,
        }
    )
    return Sidecar(config, node_id=f"{service}-1", backoff=fast_backoff())


@asynccontextmanager
async def workloads(root: Path, cp: RunningControlPlane, app: str) -> AsyncIterator[Workloads]:
    ca = CertificateAuthority.create("cluster.local", now=datetime.now(UTC))
    echo = sidecar(
        root,
        ca,
        "echo",
        cp,
        listeners={"inbound": "127.0.0.1:0", "admin": "127.0.0.1:0"},
        app=app,
        grpc_services=["test.Echo"],
    )
    client = sidecar(
        root,
        ca,
        "client",
        cp,
        listeners={"outbound": "127.0.0.1:0", "admin": "127.0.0.1:0"},
        dependencies=["echo"],
    )
    started: list[Sidecar] = []
    try:
        await echo.start()
        started.append(echo)
        addresses = await client.start()
        started.append(client)
        yield Workloads(echo, client, addresses["outbound"])
    finally:
        for s in started:
            await s.stop(0.5)


async def echo_call(outbound: str, body: bytes = b"ping") -> bytes:
    async with grpc.aio.insecure_channel(outbound, options=[("grpc.default_authority", "echo")]) as channel:
        reply: bytes = await channel.unary_unary("/test.Echo/Unary")(body, timeout=5)
        return reply


def routes_to_echo(w: Workloads) -> bool:
    entry = w.client.snapshot.config.services.get("echo")
    return entry is not None and [str(e.address) for e in entry.endpoints] == [w.echo.addresses["inbound"]]


def test_a_bad_snapshot_is_nacked_and_the_sidecar_keeps_relaying_on_the_old_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "store.sqlite3")
        builder = CorruptingBuilder()
        cp = await start_control_plane(store, builder=builder)
        try:
            async with echo_app() as app, workloads(tmp_path, cp, app) as w:
                assert not w.client.ready or w.client.snapshot.version  # ready only with a snapshot
                await eventually(lambda: w.client.ready and w.echo.ready, DEADLINE, "both sidecars ready")
                await eventually(lambda: routes_to_echo(w), DEADLINE, "the client to learn echo's endpoint")
                assert await echo_call(w.outbound) == b"ping"
                good_version = w.client.snapshot.version
                dump = w.client.config_dump()
                assert dump["version"] == good_version
                assert dump["discovery"]["connected"] is True  # type: ignore[index]

                builder.corrupt.add("client")
                revision = put(store, "VirtualService", "echo", VS_ECHO)
                cp.servicer.notify_changed()
                await eventually(
                    lambda: cp.registry.get("client-1").state is AckState.NACK,  # type: ignore[union-attr]
                    DEADLINE,
                    "the client's nack",
                )
                record = cp.registry.get("client-1")
                assert record is not None
                assert record.nack_reason.startswith("services[0].endpoints[1].address: ")
                assert record.applied_version == good_version
                assert w.client.snapshot.version == good_version  # kept the last good snapshot
                assert w.client.discovery is not None and w.client.discovery.last_nack is not None
                assert await echo_call(w.outbound, b"still relaying") == b"still relaying"
                assert not await cp.servicer.wait_for_revision(revision, 0.2)  # the client refused it

                # The fix (whatever the cause) reaches it as a new snapshot, which it applies.
                builder.corrupt.clear()
                cp.servicer.notify_changed()
                assert await cp.servicer.wait_for_revision(revision, DEADLINE)
                assert [p.name for p in w.client.snapshot.policies] == ["echo"]
                assert w.client.snapshot.policies[0].spec == VS_ECHO
                assert await echo_call(w.outbound) == b"ping"
        finally:
            await cp.stop()
            store.close()

    run(scenario)


async def keep_calling(outbound: str, results: list[bool], stop: asyncio.Event) -> None:
    """Echo calls back to back until `stop`; each result is whether the call succeeded."""
    async with grpc.aio.insecure_channel(outbound, options=[("grpc.default_authority", "echo")]) as channel:
        unary = channel.unary_unary("/test.Echo/Unary")
        while not stop.is_set():
            try:
                results.append(await unary(b"x", timeout=5) == b"x")
            except grpc.aio.AioRpcError:
                results.append(False)


def test_sidecars_serve_while_the_control_plane_is_away_and_resync_when_it_returns(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "store.sqlite3")
        cp: RunningControlPlane | None = await start_control_plane(store)
        assert cp is not None
        port = cp.port
        try:
            async with echo_app() as app, workloads(tmp_path, cp, app) as w:
                await eventually(lambda: routes_to_echo(w), DEADLINE, "the client to learn echo's endpoint")
                assert await echo_call(w.outbound) == b"ping"
                before = w.client.snapshot
                results: list[bool] = []
                stop_calling = asyncio.Event()
                caller = asyncio.get_running_loop().create_task(
                    keep_calling(w.outbound, results, stop_calling)
                )

                await cp.stop()
                cp = None
                discovery = w.client.discovery
                assert discovery is not None
                await eventually(lambda: not discovery.connected, DEADLINE, "the client to notice")
                calls_before = len(results)
                await eventually(lambda: len(results) >= calls_before + 20, DEADLINE, "calls while away")
                assert w.client.snapshot is before and w.client.ready
                revision = put(store, "VirtualService", "echo", VS_ECHO)  # changed while away

                # Back (a new process would have an empty registry: so does this one). The warm-up
                # lets both sidecars re-register before anything is sent, so the client is never
                # sent a snapshot without echo's endpoint.
                cp = await start_control_plane(store, port=port, warmup=0.5)
                await eventually(
                    lambda: [p.name for p in w.client.snapshot.policies] == ["echo"],
                    DEADLINE,
                    "the client to get the current snapshot",
                )
                assert await cp.servicer.wait_for_revision(revision, DEADLINE)
                assert {r.node_id for r in cp.registry.sidecars()} == {"echo-1", "client-1"}
                assert routes_to_echo(w)
                assert discovery.connects == 2
                calls_before = len(results)
                await eventually(lambda: len(results) >= calls_before + 20, DEADLINE, "calls after")
                stop_calling.set()
                await caller
                assert results.count(False) == 0, f"{results.count(False)} of {len(results)} calls failed"
        finally:
            if cp is not None:
                await cp.stop()
            store.close()

    run(scenario)
