"""Registry: who is connected, which instances are endpoints (grace on a fake clock, health, one
per address), what each sidecar applied, and which Hellos it refuses (the checks a sidecar applies
to snapshots, so that nothing registered can make a sidecar Nack)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from control_plane.registry import AckState, InvalidHello, NodeIdInUse, Registration, Registry


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeWall:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def users(n: int = 1, **overrides: object) -> Registration:
    fields: dict[str, object] = {
        "node_id": f"users-{n}",
        "service": "users",
        "namespace": "default",
        "labels": {"version": "v1"},
        "inbound_address": f"10.0.0.{n}:15006",
        "identity": "spiffe://cluster.local/ns/default/sa/users",
        "grpc_services": ("demo.v1.Users",),
    }
    fields.update(overrides)
    return Registration(**fields)  # type: ignore[arg-type]


def up(registry: Registry, registration: Registration) -> int:
    """Register an instance whose sidecar then reports its app serving; returns the session."""
    record = registry.register(registration)
    registry.set_serving(registration.node_id, True)
    return record.session


def client(n: int = 1) -> Registration:
    return Registration(node_id=f"client-{n}", service="client", dependencies=("users",))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> Registry:
    return Registry(grace=5.0, forget_after=60.0, clock=clock, wall_clock=FakeWall())


def addresses(registry: Registry, service: str = "users") -> list[str]:
    return [e.address for e in registry.endpoints(service)]


def test_a_registered_instance_with_an_inbound_address_is_an_endpoint(registry: Registry) -> None:
    up(registry, users(2))
    up(registry, users(1, labels={"version": "v2"}))
    registry.register(client())

    services = registry.services()
    assert list(services) == ["users"]  # a client-only sidecar is no endpoint
    info = services["users"]
    assert info.namespace == "default"
    assert info.grpc_services == ("demo.v1.Users",)
    assert [(e.address, e.labels, e.node_id) for e in info.endpoints] == [
        ("10.0.0.1:15006", {"version": "v2"}, "users-1"),
        ("10.0.0.2:15006", {"version": "v1"}, "users-2"),
    ]
    assert info.endpoints[0].identity == "spiffe://cluster.local/ns/default/sa/users"


def test_grpc_services_of_a_service_are_the_union_of_its_instances(registry: Registry) -> None:
    up(registry, users(1, grpc_services=("demo.v1.Users",)))
    up(registry, users(2, grpc_services=("demo.v1.UserAdmin", "demo.v1.Users")))

    assert registry.services()["users"].grpc_services == ("demo.v1.UserAdmin", "demo.v1.Users")


def test_a_disconnected_endpoint_stays_for_the_grace_then_leaves(
    registry: Registry, clock: FakeClock
) -> None:
    changes: list[int] = []
    registry.subscribe(lambda: changes.append(registry.generation))
    session = up(registry, users(1))
    assert len(changes) == 2  # registered, then serving

    registry.disconnect("users-1", session)
    assert not registry.get("users-1").connected  # type: ignore[union-attr]
    assert len(changes) == 2  # nothing changed for the other sidecars yet
    assert registry.next_deadline() == clock.now + 5.0

    clock.now += 4.9
    assert addresses(registry) == ["10.0.0.1:15006"]
    assert registry.expire() is False

    clock.now += 0.1
    assert addresses(registry) == []
    assert "users" not in registry.services()
    assert registry.expire() is True
    assert len(changes) == 3  # announced once
    assert registry.expire() is False
    assert registry.next_deadline() is None


def test_a_reconnect_within_the_grace_keeps_the_endpoint(registry: Registry, clock: FakeClock) -> None:
    first = up(registry, users(1))
    registry.disconnect("users-1", first)
    clock.now += 3.0
    second = registry.register(users(1))
    clock.now += 10.0

    assert registry.expire() is False
    assert addresses(registry) == ["10.0.0.1:15006"]  # still serving: a reconnect keeps its health
    # The old stream's end, noticed late, does not disconnect the new one.
    registry.disconnect("users-1", first)
    assert registry.get("users-1").connected  # type: ignore[union-attr]
    assert second.session != first


def test_zero_grace_removes_the_endpoint_at_once(clock: FakeClock) -> None:
    registry = Registry(grace=0.0, clock=clock)
    changes: list[int] = []
    session = up(registry, users(1))
    registry.subscribe(lambda: changes.append(1))

    registry.disconnect("users-1", session)

    assert addresses(registry) == []
    assert changes == [1]


def test_an_unhealthy_instance_is_no_endpoint_but_its_service_stays_known(registry: Registry) -> None:
    changes: list[int] = []
    up(registry, users(1))
    up(registry, users(2))
    registry.subscribe(lambda: changes.append(1))

    registry.set_serving("users-1", False)
    assert addresses(registry) == ["10.0.0.2:15006"]
    registry.set_serving("users-2", False)
    assert registry.services()["users"].endpoints == ()
    registry.set_serving("users-2", False)  # no change, no notification
    assert len(changes) == 2

    registry.set_serving("users-1", True)
    assert addresses(registry) == ["10.0.0.1:15006"]
    assert len(changes) == 3


def test_a_client_only_sidecar_changes_no_endpoints(registry: Registry) -> None:
    changes: list[int] = []
    registry.subscribe(lambda: changes.append(1))
    record = registry.register(client())
    registry.set_serving("client-1", False)
    registry.disconnect("client-1", record.session)
    registry.expire()
    assert changes == []


def test_ack_and_nack_track_what_the_sidecar_applied(registry: Registry) -> None:
    registry.register(users(1))
    record = registry.get("users-1")
    assert record is not None and record.state is AckState.PENDING

    registry.sent("users-1", "3-aaa", 3)
    registry.ack("users-1", "3-aaa", 3)
    assert (record.applied_version, record.applied_revision, record.state) == ("3-aaa", 3, AckState.ACK)

    registry.sent("users-1", "5-bbb", 5)
    assert record.state is AckState.PENDING
    registry.nack("users-1", "5-bbb", "services[0].endpoints[0].address: bad host")
    assert record.state is AckState.NACK
    assert record.nack_reason == "services[0].endpoints[0].address: bad host"
    assert (record.applied_version, record.applied_revision) == ("3-aaa", 3)  # still on the last good

    # A later revision that gives it the same (refused) content does not count as applied.
    registry.still_current("users-1", 6)
    assert record.applied_revision == 3

    registry.sent("users-1", "7-ccc", 7)
    registry.ack("users-1", "7-ccc", 7)
    assert (record.state, record.nack_reason, record.applied_revision) == (AckState.ACK, "", 7)
    # Nothing changes for it at revision 9: it has applied 9 as well.
    registry.still_current("users-1", 9)
    assert record.applied_revision == 9


def test_a_late_ack_of_an_earlier_push_leaves_the_latest_pending(registry: Registry) -> None:
    registry.register(users(1))
    registry.sent("users-1", "3-aaa", 3)
    registry.sent("users-1", "4-bbb", 4)
    registry.ack("users-1", "3-aaa", 3)
    record = registry.get("users-1")
    assert record is not None
    assert (record.applied_version, record.applied_revision, record.state) == ("3-aaa", 3, AckState.PENDING)
    registry.nack("users-1", "3-aaa", "stale")  # a nack of an old version is not the current state
    assert record.state is AckState.PENDING


def test_sidecars_lists_copies_connected_first_and_forgets_long_gone_ones(
    registry: Registry, clock: FakeClock
) -> None:
    gone = registry.register(users(2))
    registry.register(client())
    registry.register(users(1))
    registry.disconnect("users-2", gone.session)

    listed = registry.sidecars()
    assert [(r.node_id, r.connected) for r in listed] == [
        ("client-1", True),
        ("users-1", True),
        ("users-2", False),
    ]
    listed[0].connected = False
    assert registry.get("client-1").connected  # type: ignore[union-attr]

    clock.now += 60.0
    registry.expire()
    assert [r.node_id for r in registry.sidecars()] == ["client-1", "users-1"]


def test_last_seen_follows_the_wall_clock() -> None:
    wall = FakeWall()
    registry = Registry(wall_clock=wall)
    registry.register(users(1))
    wall.now += timedelta(seconds=30)
    registry.ack("users-1", "1-x", 1)
    record = registry.get("users-1")
    assert record is not None and record.last_seen == wall.now


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"node_id": ""}, "node_id"),
        ({"service": "users service"}, "service"),
        ({"namespace": "a/b"}, "namespace"),
        ({"inbound_address": "10.0.0.1"}, "inbound_address"),
        ({"inbound_address": "10.0.0.1:0"}, "inbound_address"),
        ({"inbound_address": "fd00::1:15006"}, "inbound_address"),
        ({"admin_address": "localhost:http"}, "admin_address"),
        ({"identity": "users"}, "identity"),
        ({"identity": "spiffe://cluster.local/users"}, "identity"),
        ({"labels": {"": "x"}}, "labels"),
        ({"inbound_address": "users_1.local:15006"}, "inbound_address"),
        ({"inbound_address": "10.0.0.1:015006x"}, "inbound_address"),
        ({"grpc_services": ("demo.v1.Users/Get",)}, "grpc_services[0]"),
        ({"grpc_services": ("demo.v1.\tUsers",)}, "grpc_services[0]"),
        ({"grpc_services": ("",)}, "grpc_services[0]"),
        ({"dependencies": ("orders", "")}, "dependencies[1]"),
    ],
)
def test_a_bad_hello_is_refused_naming_the_field(
    registry: Registry, bad: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidHello) as raised:
        registry.register(users(1, **bad))
    assert raised.value.field == field
    assert str(raised.value).startswith(f"hello.{field}: ")
    assert registry.sidecars() == []


def test_ipv6_inbound_addresses_are_accepted(registry: Registry) -> None:
    up(registry, users(1, inbound_address="[fd00::1]:15006"))
    assert addresses(registry) == ["[fd00::1]:15006"]


def test_a_new_endpoint_is_not_serving_until_its_sidecar_says_so(registry: Registry) -> None:
    changes: list[int] = []
    registry.subscribe(lambda: changes.append(1))
    registry.register(users(1))

    assert "users" in registry.services()  # known: calls fail as "no endpoints", not "no route"
    assert addresses(registry) == []
    assert len(changes) == 1
    registry.set_serving("users-1", True)
    assert addresses(registry) == ["10.0.0.1:15006"]
    assert len(changes) == 2
    # A client-only sidecar has no app to wait for.
    record = registry.register(client())
    assert record.serving


def test_a_restart_on_the_same_address_under_a_new_node_id_gives_one_endpoint(
    registry: Registry, clock: FakeClock
) -> None:
    # users-1 is killed -9; its record stays for the grace. users-9 restarts on the same port.
    old = up(registry, users(1))
    clock.now += 1.0
    registry.disconnect("users-1", old)
    up(registry, users(9, inbound_address="10.0.0.1:15006", labels={"version": "v2"}))

    (endpoint,) = registry.endpoints("users")
    assert (endpoint.node_id, endpoint.labels) == ("users-9", {"version": "v2"})

    # Both connected (two live streams claim one address): the newest wins.
    registry.register(users(1))  # a reconnect of users-1, same registration: serving as it was
    (endpoint,) = registry.endpoints("users")
    assert endpoint.node_id == "users-1"
    # The newest one's stream ends: the other, still connected, is the endpoint again (announced).
    changes: list[int] = []
    unsubscribe = registry.subscribe(lambda: changes.append(1))
    latest = registry.get("users-1")
    assert latest is not None
    registry.disconnect("users-1", latest.session)
    assert changes == [1]
    assert [e.node_id for e in registry.endpoints("users")] == ["users-9"]
    unsubscribe()
    registry.register(users(1))
    # Another service on that address: one endpoint in all, the newest one.
    up(registry, users(5, node_id="orders-5", service="orders", inbound_address="10.0.0.1:15006"))
    assert registry.endpoints("users") == []
    assert [e.node_id for e in registry.endpoints("orders")] == ["orders-5"]


def test_a_grpc_service_of_two_services_is_kept_by_both(registry: Registry) -> None:
    health = "grpc.health.v1.Health"
    up(registry, users(1, grpc_services=("demo.v1.Users", health)))
    up(registry, users(2, node_id="orders-2", service="orders", grpc_services=("demo.v1.Orders", health)))

    services = registry.services()
    assert services["users"].grpc_services == ("demo.v1.Users", health)
    assert services["orders"].grpc_services == ("demo.v1.Orders", health)


def test_a_node_id_connected_with_another_registration_is_refused(
    registry: Registry, clock: FakeClock
) -> None:
    session = up(registry, users(1))

    with pytest.raises(NodeIdInUse, match="users-1"):
        registry.register(users(1, inbound_address="10.0.0.7:15006"))
    assert addresses(registry) == ["10.0.0.1:15006"]

    # The same registration again is the same sidecar reconnecting: it takes over.
    again = registry.register(users(1))
    assert again.session != session and again.serving
    # Once disconnected, the node id is free for another registration.
    registry.disconnect("users-1", again.session)
    moved = registry.register(users(1, inbound_address="10.0.0.7:15006"))
    assert not moved.serving  # a new instance: not serving until it says so
    assert registry.endpoints("users") == []
