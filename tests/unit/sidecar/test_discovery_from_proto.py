"""from_proto: a pushed snapshot becomes the sidecar's types, or is refused with a reason naming the
field (the reason the sidecar Nacks with); whatever the registry accepts in a Hello, from_proto
accepts in a snapshot. Also the reconnect backoff."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from mesh.v1 import discovery_pb2, resources_pb2

from control_plane.registry import InvalidHello, Registration, Registry
from control_plane.snapshots import SnapshotBuilder
from sidecar.config import Address, Endpoint, Policy, ServiceEntry
from sidecar.discovery import Backoff, SnapshotRejected, from_proto
from tests.support.memory_store import MemoryStore

USERS_ID = "spiffe://cluster.local/ns/default/sa/users"


def good() -> discovery_pb2.Snapshot:
    snapshot = discovery_pb2.Snapshot(version="7-abcdef012345", store_revision=7)
    users = snapshot.services.add(name="users", namespace="default", grpc_services=["demo.v1.Users"])
    users.endpoints.add(address="10.0.0.1:15006", labels={"version": "v1"}, identity=USERS_ID)
    users.endpoints.add(address="[fd00::2]:15006", labels={"version": "v2"})
    snapshot.services.add(name="orders", namespace="shop", grpc_services=["demo.v1.Orders"])
    spec = struct_pb2.Struct()
    spec.update(
        {"hosts": ["users"], "http": [{"route": [{"destination": {"host": "users"}, "weight": 100}]}]}
    )
    snapshot.policies.append(
        resources_pb2.Resource(
            kind="VirtualService", namespace="default", name="users", spec=spec, resource_version=5
        )
    )
    return snapshot


def test_a_good_snapshot_becomes_service_entries_and_policies() -> None:
    discovered = from_proto(good())

    assert discovered.version == "7-abcdef012345"
    assert discovered.store_revision == 7
    assert discovered.services == {
        "users": ServiceEntry(
            "users",
            ("demo.v1.Users",),
            (
                Endpoint(Address("10.0.0.1", 15006), {"version": "v1"}, USERS_ID),
                Endpoint(Address("fd00::2", 15006), {"version": "v2"}),
            ),
        ),
        "orders": ServiceEntry("orders", ("demo.v1.Orders",), ()),
    }
    # Struct numbers are doubles; integral ones come back as ints.
    assert discovered.policies == (
        Policy(
            "VirtualService",
            "default",
            "users",
            {"hosts": ["users"], "http": [{"route": [{"destination": {"host": "users"}, "weight": 100}]}]},
            5,
        ),
    )
    weight = discovered.policies[0].spec["http"][0]["route"][0]["weight"]
    assert isinstance(weight, int)


def test_an_empty_snapshot_is_valid() -> None:
    discovered = from_proto(discovery_pb2.Snapshot(version="0-e3b0c44298fc"))
    assert discovered.services == {} and discovered.policies == ()


Mutation = Callable[[discovery_pb2.Snapshot], None]


def _endpoint_address(value: str) -> Mutation:
    def mutate(s: discovery_pb2.Snapshot) -> None:
        s.services[0].endpoints[0].address = value

    return mutate


def _add_service(name: str, grpc: str = "") -> Mutation:
    def mutate(s: discovery_pb2.Snapshot) -> None:
        s.services.add(name=name, grpc_services=[grpc] if grpc else [])

    return mutate


def _set(setter: Callable[[discovery_pb2.Snapshot], Any]) -> Mutation:
    def mutate(s: discovery_pb2.Snapshot) -> None:
        setter(s)

    return mutate


BAD: dict[str, tuple[Mutation, str, str]] = {
    "no version": (_set(lambda s: setattr(s, "version", "")), "version", "empty"),
    "address without port": (_endpoint_address("10.0.0.1"), "services[0].endpoints[0].address", "host:port"),
    "address with a bad port": (
        _endpoint_address("10.0.0.1:99999"),
        "services[0].endpoints[0].address",
        "port must be",
    ),
    "address with port 0": (_endpoint_address("10.0.0.1:0"), "services[0].endpoints[0].address", "port 0"),
    "address with a bad host": (
        _endpoint_address("not a host:15006"),
        "services[0].endpoints[0].address",
        "bad host",
    ),
    "host with an underscore": (
        _endpoint_address("users_1.local:15006"),
        "services[0].endpoints[0].address",
        "bad host",
    ),
    "empty label name": (
        _set(lambda s: s.services[0].endpoints[0].labels.update({"": "x"})),
        "services[0].endpoints[0].labels",
        "empty label name",
    ),
    "ipv6 without brackets": (
        _endpoint_address("fd00::1:15006"),
        "services[0].endpoints[0].address",
        "brackets",
    ),
    "duplicate endpoint": (
        _set(lambda s: s.services[0].endpoints.add(address="10.0.0.1:15006")),
        "services[0].endpoints[2].address",
        "duplicate endpoint 10.0.0.1:15006",
    ),
    "bad identity": (
        _set(lambda s: setattr(s.services[0].endpoints[1], "identity", "spiffe://cluster.local/users")),
        "services[0].endpoints[1].identity",
        "/ns/<namespace>/sa/<service>",
    ),
    "duplicate service": (_add_service("users"), "services[2].name", "duplicate service 'users'"),
    "service without a name": (_add_service(""), "services[2].name", "required"),
    "bad grpc service name": (
        _add_service("x", "demo.v1.Users/Get"),
        "services[2].grpc_services[0]",
        "not a gRPC service name",
    ),
    "unknown policy kind": (
        _set(lambda s: setattr(s.policies[0], "kind", "Gateway")),
        "policies[0].kind",
        "unknown kind 'Gateway'",
    ),
    "policy without a name": (
        _set(lambda s: setattr(s.policies[0], "name", "")),
        "policies[0].name",
        "required",
    ),
    "duplicate policy": (
        _set(lambda s: s.policies.append(s.policies[0])),
        "policies[1]",
        "duplicate VirtualService default/users",
    ),
}


@pytest.mark.parametrize("mutate, path, reason", BAD.values(), ids=BAD.keys())
def test_a_bad_snapshot_is_refused_naming_the_field(mutate: Mutation, path: str, reason: str) -> None:
    snapshot = good()
    mutate(snapshot)
    with pytest.raises(SnapshotRejected) as raised:
        from_proto(snapshot)
    assert raised.value.path == path
    assert reason in raised.value.reason
    assert str(raised.value).startswith(f"{path}: ")


def test_a_grpc_service_of_several_services_is_ambiguous_not_refused() -> None:
    snapshot = good()
    snapshot.services.add(name="users2", grpc_services=["demo.v1.Users", "grpc.health.v1.Health"])
    snapshot.services[1].grpc_services.append("grpc.health.v1.Health")

    discovered = from_proto(snapshot)

    # Each service keeps what it serves; the router sees a gRPC service under several services
    # and routes it only by :authority. The ambiguous ones are listed too.
    assert discovered.services["users"].grpc_services == ("demo.v1.Users",)
    assert discovered.services["users2"].grpc_services == ("demo.v1.Users", "grpc.health.v1.Health")
    assert discovered.services["orders"].grpc_services == ("demo.v1.Orders", "grpc.health.v1.Health")
    assert discovered.ambiguous_grpc_services == {
        "demo.v1.Users": ("users", "users2"),
        "grpc.health.v1.Health": ("orders", "users2"),
    }
    assert from_proto(good()).ambiguous_grpc_services == {}


def mostly(valid: st.SearchStrategy[Any], weird: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually a valid value (so that many examples pass the registry), sometimes a weird one."""
    return st.sampled_from([True] * 5 + [False]).flatmap(lambda usual: valid if usual else weird)


@settings(max_examples=300, deadline=None)
@given(
    service=mostly(st.sampled_from(["users", "u_1.x", "é"]), st.text(max_size=8)),
    namespace=mostly(st.sampled_from(["default", "a-b"]), st.text(max_size=8)),
    labels=mostly(
        st.just({"version": "v1"}),
        st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
    ),
    address=mostly(
        st.sampled_from(["10.0.0.1:15006", "users-1.local:1", "[fd00::1]:15006", ""]),
        st.one_of(
            st.tuples(
                st.sampled_from(["10.0.0.1", "users_1", "fd00::1", "", "a..b", "é", "[10.0.0.1]"]),
                st.sampled_from(["15006", "0", "99999", "", "0x10", "١٢"]),
            ).map(":".join),
            st.text(max_size=24),
        ),
    ),
    identity=mostly(
        st.sampled_from(["", "spiffe://cluster.local/ns/default/sa/users"]),
        st.one_of(st.text(max_size=40), st.just("spiffe://cluster.local/users")),
    ),
    grpc=st.lists(
        mostly(st.sampled_from(["demo.v1.Users", "grpc.health.v1.Health"]), st.text(max_size=10)),
        max_size=2,
    ),
)
def test_what_the_registry_accepts_no_sidecar_refuses(
    service: str,
    namespace: str,
    labels: dict[str, str],
    address: str,
    identity: str,
    grpc: list[str],
) -> None:
    registration = Registration(
        node_id="n-1",
        service=service,
        namespace=namespace,
        labels=labels,
        inbound_address=address,
        identity=identity,
        grpc_services=tuple(grpc),
    )
    registry = Registry()
    try:
        registry.register(registration)
    except InvalidHello:
        return
    # A second instance on the same address, and another service serving the same gRPC services.
    second = Registration(node_id="n-2", service=service, namespace=namespace, inbound_address=address)
    other = Registration(
        node_id="n-3", service="other", inbound_address="10.9.9.9:15006", grpc_services=tuple(grpc)
    )
    for each in (second, other):
        registry.register(each)
    for node_id in ("n-1", "n-2", "n-3"):
        registry.set_serving(node_id, True)
    builder = SnapshotBuilder()
    caller = Registration(node_id="caller", service="caller")
    discovered = from_proto(builder.build(caller, registry, builder.load(MemoryStore())))
    if address and service != "other":
        assert len(discovered.services[service].endpoints) == 1


@settings(max_examples=200, deadline=None)
@given(
    address=st.text(max_size=30),
    name=st.text(max_size=10),
    grpc=st.text(max_size=10),
    identity=st.text(max_size=40),
)
def test_from_proto_accepts_or_refuses_never_crashes(
    address: str, name: str, grpc: str, identity: str
) -> None:
    snapshot = discovery_pb2.Snapshot(version="1-x")
    service = snapshot.services.add(name=name, grpc_services=[grpc])
    service.endpoints.add(address=address, identity=identity)
    try:
        discovered = from_proto(snapshot)
    except SnapshotRejected as exc:
        assert exc.path.startswith("services[0]")
    else:
        (endpoint,) = discovered.services[name].endpoints
        assert endpoint.address.port > 0


def test_backoff_doubles_to_the_cap_with_jitter_and_resets() -> None:
    values = iter([0.5, 1.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    backoff = Backoff(initial=0.1, maximum=5.0, jitter=0.2, rand=lambda: next(values))

    delays = [round(backoff.next(), 6) for _ in range(8)]

    assert delays == [0.1, 0.24, 0.32, 0.8, 1.6, 3.2, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == pytest.approx(0.1)
