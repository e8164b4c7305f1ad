"""demo.v1.Orders through real grpc.aio servers: its users check, errors, and what its users call carries."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from demo.v1 import orders_pb2, orders_pb2_grpc, users_pb2, users_pb2_grpc

from services.common.errors import InvalidArgument
from services.common.identity import Instance
from services.common.inprocess import channel_for
from services.orders import servicer as orders_servicer
from services.orders.store import OrderStore
from services.orders.users_client import UsersClient, users_channel
from services.users import servicer as users_servicer
from services.users.store import UserStore

ORDERS = Instance("orders", "v1", "orders-v1-a")
USERS = Instance("users", "v2", "users-v2-b")


@asynccontextmanager
async def orders_for(users: Any) -> AsyncIterator[Any]:
    """An Orders stub for a server whose users checks go to `users` (a UsersClient or a stand-in)."""
    register = functools.partial(orders_servicer.register, store=OrderStore(), users=users, instance=ORDERS)
    async with channel_for(register) as channel:
        yield orders_pb2_grpc.OrdersStub(channel)


@asynccontextmanager
async def mesh() -> AsyncIterator[tuple[Any, Any]]:
    """Orders wired to a real users server, as through a sidecar: (orders stub, users stub)."""
    users_register = functools.partial(users_servicer.register, store=UserStore(), instance=USERS)
    async with (
        channel_for(users_register) as to_users,
        orders_for(UsersClient(to_users)) as orders,
    ):
        yield orders, users_pb2_grpc.UsersStub(to_users)


async def expect_status(code: grpc.StatusCode, call: Awaitable[Any]) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code, raised.value
    details: str = raised.value.details()
    return details


def test_create_order_checks_the_user_and_names_both_instances() -> None:
    async def body() -> None:
        async with mesh() as (orders, users):
            await users.CreateUser(users_pb2.CreateUserRequest(id="ada", name="Ada"))
            call = orders.CreateOrder(orders_pb2.CreateOrderRequest(user_id="ada", item="book", quantity=2))
            reply = await call
            assert reply.order == orders_pb2.Order(id="order-1", user_id="ada", item="book", quantity=2)
            assert reply.served_by == orders_pb2.OrdersServedBy(
                service="orders", version="v1", instance="orders-v1-a"
            )
            assert reply.user_checked_by == orders_pb2.OrdersServedBy(
                service="users", version="v2", instance="users-v2-b"
            )
            metadata = dict(await call.initial_metadata())
            assert (metadata["x-mesh-version"], metadata["x-mesh-instance"]) == ("v1", "orders-v1-a")

            got = await orders.GetOrder(orders_pb2.GetOrderRequest(id="order-1"))
            assert got.order == reply.order
            assert got.served_by == reply.served_by

    asyncio.run(body())


def test_create_order_for_unknown_user_is_not_found_and_stores_nothing() -> None:
    async def body() -> None:
        async with mesh() as (orders, _):
            request = orders_pb2.CreateOrderRequest(user_id="ghost", item="book", quantity=1)
            details = await expect_status(grpc.StatusCode.NOT_FOUND, orders.CreateOrder(request))
            assert details == "user 'ghost' does not exist"
            listed = await orders.ListOrders(orders_pb2.ListOrdersRequest())
            assert list(listed.orders) == []

    asyncio.run(body())


class NoUsers:
    """Stands in for UsersClient where the users service must not be asked."""

    async def check_user(self, user_id: str, incoming: Any) -> Instance:
        raise AssertionError(f"users service asked about {user_id!r}")


def test_invalid_order_fails_before_asking_users() -> None:
    async def body() -> None:
        async with orders_for(NoUsers()) as orders:
            request = orders_pb2.CreateOrderRequest(user_id="ada", item="book", quantity=0)
            details = await expect_status(grpc.StatusCode.INVALID_ARGUMENT, orders.CreateOrder(request))
            assert details == str(InvalidArgument("quantity must be at least 1"))

    asyncio.run(body())


def test_get_unknown_order_and_list_filter() -> None:
    async def body() -> None:
        async with mesh() as (orders, users):
            for user in ("ada", "grace"):
                await users.CreateUser(users_pb2.CreateUserRequest(id=user, name=user))
            for user, item in (("ada", "book"), ("grace", "lamp"), ("ada", "pen")):
                await orders.CreateOrder(orders_pb2.CreateOrderRequest(user_id=user, item=item, quantity=1))
            listed = await orders.ListOrders(orders_pb2.ListOrdersRequest(user_id="ada"))
            assert [o.item for o in listed.orders] == ["book", "pen"]
            assert listed.served_by.instance == "orders-v1-a"
            everything = await orders.ListOrders(orders_pb2.ListOrdersRequest())
            assert len(everything.orders) == 3
            missing = orders.GetOrder(orders_pb2.GetOrderRequest(id="x"))
            await expect_status(grpc.StatusCode.NOT_FOUND, missing)

    asyncio.run(body())


class RecordingUpstream:
    """A bare HTTP/2 server that records the headers of each request and fails it with UNAVAILABLE."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        self.requests.append({str(k): str(v) for k, v in event.headers or ()})
                        trailers_only = [
                            (":status", "200"),
                            ("content-type", "application/grpc"),
                            ("grpc-status", str(grpc.StatusCode.UNAVAILABLE.value[0])),
                            ("grpc-message", "recorded"),
                        ]
                        conn.send_headers(event.stream_id, trailers_only, end_stream=True)
                writer.write(conn.data_to_send())
                await writer.drain()
        finally:
            writer.close()


def test_users_call_carries_authority_deadline_and_trace_context() -> None:
    async def body() -> None:
        upstream = RecordingUpstream()
        server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with (
                users_channel(f"127.0.0.1:{port}", "users") as channel,
                orders_for(UsersClient(channel)) as orders,
            ):
                traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                call = orders.CreateOrder(
                    orders_pb2.CreateOrderRequest(user_id="ada", item="book", quantity=1),
                    timeout=30,
                    metadata=(("traceparent", traceparent), ("x-not-propagated", "1")),
                )
                details = await expect_status(grpc.StatusCode.UNAVAILABLE, call)
                assert details == "users service: recorded"
        finally:
            server.close()
            await server.wait_closed()
        [headers] = upstream.requests
        assert headers[":authority"] == "users"
        assert headers[":path"] == "/demo.v1.Users/GetUser"
        assert headers["traceparent"] == traceparent
        assert "x-not-propagated" not in headers
        # grpc-timeout is the caller's remaining budget (about 30 s; gRPC rounds the header up a
        # little), not the 5 s default.
        timeout = headers["grpc-timeout"]
        unit_seconds = {"H": 3600, "M": 60, "S": 1, "m": 1e-3, "u": 1e-6, "n": 1e-9}[timeout[-1]]
        assert 20 < int(timeout[:-1]) * unit_seconds <= 31

    asyncio.run(body())
