"""SnapshotBuilder: what goes to whom, and versions that change only with the content."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format
from mesh.v1 import discovery_pb2

from control_plane.registry import Registration, Registry
from control_plane.snapshots import SnapshotBuilder, content_hash, version_hash
from sidecar.discovery import from_proto
from tests.support.memory_store import MemoryStore


def reg(service: str, n: int = 1, **overrides: Any) -> Registration:
    fields: dict[str, Any] = {
        "node_id": f"{service}-{n}",
        "service": service,
        "namespace": "default",
        "labels": {"app": service, "version": "v1"},
        "inbound_address": f"10.0.{len(service)}.{n}:15006",
        "identity": f"spiffe://cluster.local/ns/default/sa/{service}",
        "grpc_services": (f"demo.v1.{service.title()}",),
    }
    fields.update(overrides)
    return Registration(**fields)


def up(registry: Registry, registration: Registration) -> None:
    """Register an instance whose sidecar then reports its app serving."""
    registry.register(registration)
    registry.set_serving(registration.node_id, True)


@pytest.fixture
def registry() -> Registry:
    registry = Registry()
    up(registry, reg("users", 1))
    up(registry, reg("users", 2, labels={"app": "users", "version": "v2"}))
    up(registry, reg("orders", 1))
    up(registry, reg("payments", 1, namespace="billing"))
    return registry


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def build(registration: Registration, registry: Registry, store: MemoryStore) -> discovery_pb2.Snapshot:
    builder = SnapshotBuilder()
    return builder.build(registration, registry, builder.load(store))


def service_names(snapshot: discovery_pb2.Snapshot) -> list[str]:
    return [s.name for s in snapshot.services]


def policy_keys(snapshot: discovery_pb2.Snapshot) -> list[str]:
    return [f"{p.kind} {p.namespace}/{p.name}" for p in snapshot.policies]


CLIENT = Registration(node_id="client-1", service="client", namespace="default")


def test_without_dependencies_a_sidecar_gets_every_service_its_own_included(
    registry: Registry, store: MemoryStore
) -> None:
    snapshot = build(reg("users", 1), registry, store)
    assert service_names(snapshot) == ["orders", "payments", "users"]

    users = snapshot.services[2]
    assert users.namespace == "default"
    assert list(users.grpc_services) == ["demo.v1.Users"]
    assert [(e.address, dict(e.labels), e.identity) for e in users.endpoints] == [
        ("10.0.5.1:15006", {"app": "users", "version": "v1"}, "spiffe://cluster.local/ns/default/sa/users"),
        ("10.0.5.2:15006", {"app": "users", "version": "v2"}, "spiffe://cluster.local/ns/default/sa/users"),
    ]
    assert snapshot.services[1].namespace == "billing"


def test_with_dependencies_a_sidecar_gets_only_those_even_without_instances(
    registry: Registry, store: MemoryStore
) -> None:
    client = Registration(node_id="c", service="client", dependencies=("users", "inventory"))
    snapshot = build(client, registry, store)

    assert service_names(snapshot) == ["inventory", "users"]
    inventory = snapshot.services[0]
    assert (inventory.namespace, list(inventory.endpoints)) == ("", [])
    assert len(snapshot.services[1].endpoints) == 2


def test_unhealthy_and_departed_instances_are_not_endpoints(registry: Registry, store: MemoryStore) -> None:
    registry.set_serving("users-2", False)
    record = registry.get("orders-1")
    assert record is not None
    registry.grace = 0.0  # orders leaves at once
    registry.disconnect("orders-1", record.session)

    snapshot = build(CLIENT, registry, store)

    assert service_names(snapshot) == ["payments", "users"]
    assert [e.address for e in snapshot.services[1].endpoints] == ["10.0.5.1:15006"]


VS_USERS = {"hosts": ["users"], "http": [{"route": [{"destination": {"host": "users", "subset": "v1"}}]}]}
DR_USERS = {
    "host": "users.default.svc.cluster.local",
    "subsets": [{"name": "v1", "labels": {"version": "v1"}}],
}
VS_ORDERS_TO_LEGACY = {
    "hosts": ["orders"],
    "http": [
        {
            "route": [
                {"destination": {"host": "orders"}, "weight": 90},
                {"destination": {"host": "orders-legacy"}, "weight": 10},
            ],
            "mirror": {"host": "audit"},
        }
    ],
}


def test_outbound_policies_go_to_the_sidecars_that_call_their_host(
    registry: Registry, store: MemoryStore
) -> None:
    store.put("VirtualService", "default", "users", VS_USERS)
    store.put("DestinationRule", "default", "users", DR_USERS)
    store.put("VirtualService", "default", "orders", VS_ORDERS_TO_LEGACY)

    calls_users = Registration(node_id="c1", service="client", dependencies=("users",))
    calls_orders = Registration(node_id="c2", service="client", dependencies=("orders",))
    calls_payments = Registration(node_id="c3", service="client", dependencies=("payments",))

    assert policy_keys(build(calls_users, registry, store)) == [
        "DestinationRule default/users",
        "VirtualService default/users",
    ]
    to_orders = build(calls_orders, registry, store)
    assert policy_keys(to_orders) == ["VirtualService default/orders"]
    # The route's other destinations and its mirror become services the sidecar knows.
    assert service_names(to_orders) == ["audit", "orders", "orders-legacy"]
    assert policy_keys(build(calls_payments, registry, store)) == []
    assert len(build(CLIENT, registry, store).policies) == 3


def test_policy_specs_travel_as_json(registry: Registry, store: MemoryStore) -> None:
    resource = store.put("VirtualService", "default", "users", VS_USERS)
    snapshot = build(CLIENT, registry, store)
    policy = snapshot.policies[0]
    assert json_format.MessageToDict(policy.spec) == VS_USERS
    assert policy.resource_version == resource.resource_version
    assert policy.update_time.ToDatetime().year == 2026


AUTHZ = {"action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["x"]}}]}]}


def test_inbound_policies_by_namespace_mesh_namespace_and_selector(store: MemoryStore) -> None:
    registry = Registry()
    store.put("PeerAuthentication", "default", "strict", {"mtls": {"mode": "STRICT"}})
    store.put("PeerAuthentication", "mesh-system", "mesh", {"mtls": {"mode": "PERMISSIVE"}})
    store.put(
        "AuthorizationPolicy",
        "default",
        "users-v2",
        {**AUTHZ, "selector": {"matchLabels": {"version": "v2"}}},
    )
    store.put(
        "AuthorizationPolicy",
        "default",
        "users-any",
        {**AUTHZ, "selector": {"matchLabels": {"app": "users"}}},
    )
    store.put("RequestAuthentication", "billing", "jwt", {"jwtRules": [{"issuer": "me"}]})
    limit = {"limit": {"tokensPerInterval": 5, "interval": "1s"}}
    store.put(
        "RateLimitPolicy",
        "default",
        "users-v2-limits",
        {"selector": {"matchLabels": {"version": "v2"}}, "rules": [limit]},
    )

    v1 = build(reg("users", 1), registry, store)
    v2 = build(reg("users", 2, labels={"app": "users", "version": "v2"}), registry, store)
    payments = build(reg("payments", 1, namespace="billing"), registry, store)
    client_only = build(CLIENT, registry, store)

    assert policy_keys(v1) == [
        "AuthorizationPolicy default/users-any",
        "PeerAuthentication default/strict",
        "PeerAuthentication mesh-system/mesh",
    ]
    assert policy_keys(v2) == [
        "AuthorizationPolicy default/users-any",
        "AuthorizationPolicy default/users-v2",
        "PeerAuthentication default/strict",
        "PeerAuthentication mesh-system/mesh",
        "RateLimitPolicy default/users-v2-limits",
    ]
    assert policy_keys(payments) == [
        "PeerAuthentication mesh-system/mesh",
        "RequestAuthentication billing/jwt",
    ]
    assert policy_keys(client_only) == []  # no inbound listener, no inbound policy


def test_version_is_the_store_revision_and_a_hash_of_the_content(
    registry: Registry, store: MemoryStore
) -> None:
    store.put("VirtualService", "default", "users", VS_USERS)
    snapshot = build(CLIENT, registry, store)

    assert snapshot.store_revision == 1
    revision, _, digest = snapshot.version.partition("-")
    assert revision == "1"
    assert digest == content_hash(snapshot) == version_hash(snapshot.version)
    assert len(digest) == 12


def test_the_same_content_gives_the_same_version(registry: Registry, store: MemoryStore) -> None:
    store.put("VirtualService", "default", "users", VS_USERS)
    store.put("DestinationRule", "default", "users", DR_USERS)
    first = build(CLIENT, registry, store)
    # The same state built by another builder, from a registry filled in another order.
    other = Registry()
    for name in ("payments-1", "orders-1", "users-2", "users-1"):
        record = registry.get(name)
        assert record is not None
        up(other, record.registration)
    again = build(CLIENT, other, store)

    assert again.version == first.version
    assert again.SerializeToString(deterministic=True) == first.SerializeToString(deterministic=True)


def test_a_change_elsewhere_leaves_the_content_hash_alone(registry: Registry, store: MemoryStore) -> None:
    calls_users = Registration(node_id="c1", service="client", dependencies=("users",))
    store.put("VirtualService", "default", "users", VS_USERS)
    builder = SnapshotBuilder()
    before = builder.build(calls_users, registry, builder.load(store))

    store.put("VirtualService", "default", "orders", VS_ORDERS_TO_LEGACY)
    registry.set_serving("orders-1", False)
    after = builder.build(calls_users, registry, builder.load(store))

    assert after.store_revision == before.store_revision + 1
    assert version_hash(after.version) == version_hash(before.version)

    store.put("VirtualService", "default", "users", {**VS_USERS, "http": []})
    changed = builder.build(calls_users, registry, builder.load(store))
    assert version_hash(changed.version) != version_hash(before.version)

    registry.set_serving("users-1", False)
    rebuilt = builder.build(calls_users, registry, builder.load(store))
    assert version_hash(rebuilt.version) != version_hash(changed.version)


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.lists = 0

    def list_resources(self, kind: str | None = None, namespace: str | None = None) -> list[Any]:
        self.lists += 1
        return super().list_resources(kind, namespace)


def test_the_builder_lists_the_store_once_per_revision(registry: Registry) -> None:
    store = CountingStore()
    store.put("VirtualService", "default", "users", VS_USERS)
    builder = SnapshotBuilder()
    resources = builder.load(store)
    assert builder.load(store) is resources  # the same revision: only the revision is read
    for record in registry.sidecars():
        builder.build(record, registry, resources)
    assert store.lists == 1
    store.put("VirtualService", "default", "orders", VS_ORDERS_TO_LEGACY)
    builder.build(CLIENT, registry, builder.load(store))
    assert store.lists == 2


def test_an_address_claimed_twice_is_one_endpoint_in_every_snapshot(
    registry: Registry, store: MemoryStore
) -> None:
    # users-2 was killed -9 (its record is within the grace); it restarted as users-9, same port.
    record = registry.get("users-2")
    assert record is not None
    registry.disconnect("users-2", record.session)
    restarted = reg("users", 9, inbound_address=record.inbound_address, labels={"version": "v3"})
    up(registry, restarted)

    snapshot = build(CLIENT, registry, store)

    users = snapshot.services[2]
    assert [(e.address, dict(e.labels)) for e in users.endpoints] == [
        ("10.0.5.1:15006", {"app": "users", "version": "v1"}),
        ("10.0.5.2:15006", {"version": "v3"}),
    ]
    from_proto(snapshot)  # what every caller does with it: no "duplicate endpoint"


def test_a_grpc_service_of_two_services_goes_out_under_both_and_is_accepted(
    registry: Registry, store: MemoryStore
) -> None:
    health = "grpc.health.v1.Health"
    up(registry, reg("users", 3, grpc_services=("demo.v1.Users", health)))
    up(registry, reg("orders", 2, grpc_services=("demo.v1.Orders", health)))

    snapshot = build(CLIENT, registry, store)

    by_name = {s.name: list(s.grpc_services) for s in snapshot.services}
    assert by_name["users"] == ["demo.v1.Users", health]
    assert by_name["orders"] == ["demo.v1.Orders", health]
    discovered = from_proto(snapshot)
    assert discovered.ambiguous_grpc_services == {health: ("orders", "users")}


def test_route_hosts_a_sidecar_would_refuse_are_not_sent(registry: Registry, store: MemoryStore) -> None:
    # The policy API refuses such hosts; a spec stored before that must still not make callers Nack.
    vs = {
        "hosts": ["orders"],
        "http": [{"route": [{"destination": {"host": "orders"}}, {"destination": {"host": "bad host"}}]}],
    }
    store.put("VirtualService", "default", "orders", vs)
    calls_orders = Registration(node_id="c2", service="client", dependencies=("orders",))

    snapshot = build(calls_orders, registry, store)

    assert service_names(snapshot) == ["orders"]
    from_proto(snapshot)


def test_sidecars_with_the_same_needs_share_one_build(registry: Registry, store: MemoryStore) -> None:
    builder = SnapshotBuilder()
    resources = builder.load(store)
    clients = [
        Registration(node_id=f"client-{i}", service="client", dependencies=("users",)) for i in range(50)
    ]
    snapshots = [builder.build(c, registry, resources) for c in clients]
    assert all(s is snapshots[0] for s in snapshots)  # built once, sent to all fifty

    other = builder.build(
        Registration(node_id="c-x", service="client", dependencies=("orders",)), registry, resources
    )
    assert service_names(other) == ["orders"]
    v1, v2 = reg("users", 1), reg("users", 2, labels={"app": "users", "version": "v2"})
    assert builder.build(v1, registry, resources) is not builder.build(
        v2, registry, resources
    )  # labels differ


def test_a_registry_change_is_not_hidden_by_an_earlier_build(registry: Registry, store: MemoryStore) -> None:
    builder = SnapshotBuilder()
    client = Registration(node_id="client-1", service="client", dependencies=("users",))
    before = builder.build(client, registry, builder.load(store))
    up(registry, reg("users", 3))
    after = builder.build(client, registry, builder.load(store))
    assert len(after.services[0].endpoints) == len(before.services[0].endpoints) + 1
    assert after.version != before.version
