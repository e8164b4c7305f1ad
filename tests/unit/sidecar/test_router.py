"""Router: the destination service from :authority, else from the gRPC service in :path."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.call import CallHead
from sidecar.config import Address, Endpoint, ServiceEntry
from sidecar.errors import NoRoute, status_for
from sidecar.filters.router import Router
from sidecar.grpc_wire import Code

SERVICES = {
    "users": ServiceEntry("users", ("demo.v1.Users",), (Endpoint(Address("10.0.0.7", 15006)),)),
    "orders": ServiceEntry(
        "orders", ("demo.v1.Orders", "demo.v1.OrderAdmin"), (Endpoint(Address("10.0.0.8", 15006)),)
    ),
}


class Recorder:
    """The next handler: remembers what it was given and returns a marker."""

    def __init__(self) -> None:
        self.heads: list[CallHead] = []
        self.result = object()

    def __call__(self, head: CallHead) -> Any:
        self.heads.append(head)
        return self.result


def head(authority: str, path: str = "/demo.v1.Users/GetUser") -> CallHead:
    return CallHead(path=path, authority=authority, headers=(), peer=None, deadline=None)


def route(authority: str, path: str = "/demo.v1.Users/GetUser") -> str:
    inner = Recorder()
    call = head(authority, path)
    assert Router(inner, SERVICES)(call) is inner.result
    assert inner.heads == [call]
    return call.service


@pytest.mark.parametrize(
    "authority, expected",
    [
        ("users", "users"),
        ("orders", "orders"),
        ("users:15001", "users"),
        ("orders:80", "orders"),
        ("users.default.svc.cluster.local", "users"),
        ("users.default.svc.cluster.local:15001", "users"),
        ("orders.shop", "orders"),
    ],
)
def test_authority_names_the_service(authority: str, expected: str) -> None:
    assert route(authority, path="/some.Other/Method") == expected


@pytest.mark.parametrize(
    "authority",
    ["127.0.0.1:15001", "10.0.0.1", "10.0.0.1:15001", "[::1]:15001", "localhost:15001", "localhost", ""],
)
@pytest.mark.parametrize(
    "path, expected",
    [
        ("/demo.v1.Users/GetUser", "users"),
        ("/demo.v1.Orders/PlaceOrder", "orders"),
        ("/demo.v1.OrderAdmin/Refund", "orders"),
    ],
)
def test_address_authority_falls_back_to_the_grpc_service_in_the_path(
    authority: str, path: str, expected: str
) -> None:
    assert route(authority, path) == expected


def test_authority_takes_precedence_over_the_path() -> None:
    assert route("orders", "/demo.v1.Users/GetUser") == "orders"
    assert route("users:15001", "/demo.v1.Orders/PlaceOrder") == "users"


def test_unknown_destination_is_no_route_naming_the_service() -> None:
    inner = Recorder()
    with pytest.raises(NoRoute) as caught:
        Router(inner, SERVICES)(head("billing", "/demo.v1.Billing/Charge"))

    assert "billing" in caught.value.message
    assert inner.heads == []
    assert status_for(caught.value) == (Code.UNAVAILABLE, caught.value.message)


def test_unknown_fqdn_authority_names_the_host() -> None:
    with pytest.raises(NoRoute) as caught:
        Router(Recorder(), SERVICES)(
            head("billing.default.svc.cluster.local:15001", "/demo.v1.Billing/Charge")
        )
    assert "billing" in caught.value.message
    assert "15001" not in caught.value.message


@pytest.mark.parametrize(
    "authority, leaked",
    [
        ("10.0.0.1:15001", ("10.0.0.1", "15001")),
        ("192.168.7.9", ("192.168.7.9",)),
        ("[fd00::1]:15001", ("fd00::1", "15001")),
        ("[::1]", ("::1",)),
        ("localhost:15001", ("localhost", "15001")),
    ],
)
def test_no_route_for_an_address_authority_names_the_grpc_service_without_the_address(
    authority: str, leaked: tuple[str, ...]
) -> None:
    with pytest.raises(NoRoute) as caught:
        Router(Recorder(), SERVICES)(head(authority, "/demo.v1.Billing/Charge"))

    message = caught.value.message
    assert "demo.v1.Billing" in message
    for fragment in leaked:
        assert fragment not in message
    assert str(caught.value) == message


def test_path_without_a_service_is_no_route() -> None:
    with pytest.raises(NoRoute):
        Router(Recorder(), SERVICES)(head("10.0.0.1:15001", "/GetUser"))


def test_no_services_means_no_route() -> None:
    with pytest.raises(NoRoute):
        Router(Recorder(), {})(head("users", "/demo.v1.Users/GetUser"))


SHARED = {
    **SERVICES,
    "billing": ServiceEntry("billing", ("demo.v1.Billing", "grpc.health.v1.Health"), ()),
    "ledger": ServiceEntry("ledger", ("grpc.health.v1.Health",), ()),
}


def test_a_grpc_service_served_by_several_services_is_not_routed_by_path() -> None:
    router = Router(Recorder(), SHARED)
    with pytest.raises(NoRoute) as caught:
        router(head("127.0.0.1:15001", "/grpc.health.v1.Health/Check"))
    assert "served by several services (billing, ledger)" in caught.value.message
    assert "name the service in :authority" in caught.value.message


def test_a_shared_grpc_service_is_routed_by_authority() -> None:
    call = head("ledger", "/grpc.health.v1.Health/Check")
    Router(Recorder(), SHARED)(call)
    assert call.service == "ledger"


def test_an_unshared_grpc_service_of_the_same_service_still_routes_by_path() -> None:
    call = head("127.0.0.1:15001", "/demo.v1.Billing/Charge")
    Router(Recorder(), SHARED)(call)
    assert call.service == "billing"


def test_the_same_authority_resolves_the_same_way_every_call() -> None:
    router = Router(Recorder(), SERVICES)
    for path, expected in [("/demo.v1.Users/GetUser", "users"), ("/demo.v1.Orders/Get", "orders")] * 3:
        call = head("127.0.0.1:15001", path)  # an address: the path decides, call by call
        router(call)
        assert call.service == expected
    for _ in range(3):
        call = head("orders.shop:80", "/demo.v1.Users/GetUser")  # a name: the authority decides
        router(call)
        assert call.service == "orders"
    for _ in range(2):
        with pytest.raises(NoRoute, match="no route to service 'nope'"):
            router(head("nope"))
