"""demo.v1.Users through a real grpc.aio server on loopback: every call shape, errors, served_by."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from demo.v1 import users_pb2, users_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.identity import Instance
from services.common.inprocess import channel_for
from services.users.servicer import register
from services.users.store import UserStore

INSTANCE = Instance("users", "v2", "users-v2-a")
SERVED_BY = users_pb2.ServedBy(service="users", version="v2", instance="users-v2-a")


def with_users(test: Callable[[Any], Awaitable[None]]) -> Callable[[], None]:
    """Run an async test body against a fresh users server, passing it a UsersStub."""

    def run() -> None:
        async def body() -> None:
            async with channel_for(functools.partial(register, store=UserStore(), instance=INSTANCE)) as ch:
                await test(users_pb2_grpc.UsersStub(ch))

        asyncio.run(body())

    # Not functools.wraps: pytest would read the wrapped signature and look for a `stub` fixture.
    run.__name__, run.__doc__ = test.__name__, test.__doc__
    return run


async def requests(*messages: Any) -> AsyncIterator[Any]:
    for message in messages:
        yield message


async def expect_status(code: grpc.StatusCode, call: Awaitable[Any]) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code, raised.value
    details: str = raised.value.details()
    return details


def version_metadata(metadata: Any) -> dict[str, str]:
    return {k: v for k, v in metadata if k in ("x-mesh-version", "x-mesh-instance")}


@with_users
async def test_create_then_get(stub: Any) -> None:
    created = await stub.CreateUser(users_pb2.CreateUserRequest(name="Ada", email="ada@example.org"))
    assert created.user.id == "user-1"
    assert created.served_by == SERVED_BY
    got = await stub.GetUser(users_pb2.GetUserRequest(id="user-1"))
    assert got.user == users_pb2.User(id="user-1", name="Ada", email="ada@example.org")
    assert got.served_by == SERVED_BY


@with_users
async def test_unary_replies_carry_version_metadata(stub: Any) -> None:
    call = stub.CreateUser(users_pb2.CreateUserRequest(name="Ada"))
    assert version_metadata(await call.initial_metadata()) == {
        "x-mesh-version": "v2",
        "x-mesh-instance": "users-v2-a",
    }
    await call


@with_users
async def test_errors_still_carry_version_metadata(stub: Any) -> None:
    call = stub.GetUser(users_pb2.GetUserRequest(id="ghost"))
    details = await expect_status(grpc.StatusCode.NOT_FOUND, call)
    assert details == "user 'ghost' not found"
    assert version_metadata(await call.initial_metadata())["x-mesh-version"] == "v2"


@with_users
async def test_create_errors(stub: Any) -> None:
    await stub.CreateUser(users_pb2.CreateUserRequest(id="ada", name="Ada"))
    await expect_status(
        grpc.StatusCode.ALREADY_EXISTS, stub.CreateUser(users_pb2.CreateUserRequest(id="ada", name="A"))
    )
    await expect_status(grpc.StatusCode.INVALID_ARGUMENT, stub.CreateUser(users_pb2.CreateUserRequest()))


@with_users
async def test_update_sets_only_present_fields(stub: Any) -> None:
    await stub.CreateUser(users_pb2.CreateUserRequest(id="ada", name="Ada", email="old@example.org"))
    reply = await stub.UpdateUser(users_pb2.UpdateUserRequest(id="ada", email="new@example.org"))
    assert reply.user == users_pb2.User(id="ada", name="Ada", email="new@example.org")
    assert reply.served_by == SERVED_BY
    # An explicitly empty email is a change, unlike an absent one.
    reply = await stub.UpdateUser(users_pb2.UpdateUserRequest(id="ada", email=""))
    assert reply.user.email == ""
    await expect_status(
        grpc.StatusCode.INVALID_ARGUMENT, stub.UpdateUser(users_pb2.UpdateUserRequest(id="ada", name=""))
    )
    await expect_status(
        grpc.StatusCode.NOT_FOUND, stub.UpdateUser(users_pb2.UpdateUserRequest(id="nobody", name="N"))
    )


@with_users
async def test_delete(stub: Any) -> None:
    await stub.CreateUser(users_pb2.CreateUserRequest(id="ada", name="Ada"))
    reply = await stub.DeleteUser(users_pb2.DeleteUserRequest(id="ada"))
    assert reply.served_by == SERVED_BY
    await expect_status(grpc.StatusCode.NOT_FOUND, stub.GetUser(users_pb2.GetUserRequest(id="ada")))
    await expect_status(grpc.StatusCode.NOT_FOUND, stub.DeleteUser(users_pb2.DeleteUserRequest(id="ada")))


@with_users
async def test_list_users_streams_each_user(stub: Any) -> None:
    for name in ("Ada", "Grace", "Linus"):
        await stub.CreateUser(users_pb2.CreateUserRequest(name=name))
    call = stub.ListUsers(users_pb2.ListUsersRequest())
    replies = [reply async for reply in call]
    assert [r.user.name for r in replies] == ["Ada", "Grace", "Linus"]
    assert all(r.served_by == SERVED_BY for r in replies)
    assert version_metadata(await call.initial_metadata())["x-mesh-instance"] == "users-v2-a"
    limited = [reply.user.name async for reply in stub.ListUsers(users_pb2.ListUsersRequest(limit=2))]
    assert limited == ["Ada", "Grace"]


@with_users
async def test_list_users_when_empty(stub: Any) -> None:
    call = stub.ListUsers(users_pb2.ListUsersRequest())
    assert [reply async for reply in call] == []
    assert await call.code() == grpc.StatusCode.OK


@with_users
async def test_import_users_counts_and_stores(stub: Any) -> None:
    call = stub.ImportUsers(
        requests(
            users_pb2.ImportUsersRequest(user=users_pb2.User(id="a", name="A")),
            users_pb2.ImportUsersRequest(user=users_pb2.User(name="B")),
        )
    )
    reply = await call
    assert reply.imported_count == 2
    assert reply.served_by == SERVED_BY
    assert version_metadata(await call.initial_metadata())["x-mesh-version"] == "v2"
    assert (await stub.GetUser(users_pb2.GetUserRequest(id="user-1"))).user.name == "B"


@with_users
async def test_import_users_is_all_or_nothing(stub: Any) -> None:
    call = stub.ImportUsers(
        requests(
            users_pb2.ImportUsersRequest(user=users_pb2.User(id="a", name="A")),
            users_pb2.ImportUsersRequest(user=users_pb2.User(id="b", name="")),
        )
    )
    await expect_status(grpc.StatusCode.INVALID_ARGUMENT, call)
    await expect_status(grpc.StatusCode.NOT_FOUND, stub.GetUser(users_pb2.GetUserRequest(id="a")))


@with_users
async def test_sync_users_answers_each_message_in_turn(stub: Any) -> None:
    call = stub.SyncUsers()
    for name, created in (("Ada", True), ("Ada Lovelace", False)):
        await call.write(users_pb2.SyncUsersRequest(user=users_pb2.User(id="ada", name=name)))
        reply = await call.read()
        assert reply.user == users_pb2.User(id="ada", name=name)
        assert reply.created is created
        assert reply.served_by == SERVED_BY
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert version_metadata(await call.initial_metadata())["x-mesh-version"] == "v2"


@with_users
async def test_sync_users_invalid_message_ends_the_stream(stub: Any) -> None:
    call = stub.SyncUsers(
        requests(
            users_pb2.SyncUsersRequest(user=users_pb2.User(name="Ada")),
            users_pb2.SyncUsersRequest(user=users_pb2.User(name="")),
            users_pb2.SyncUsersRequest(user=users_pb2.User(name="Never stored")),
        )
    )
    first = await call.read()
    assert first.user.id == "user-1"
    await expect_status(grpc.StatusCode.INVALID_ARGUMENT, call.read())
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    names = [reply.user.name async for reply in stub.ListUsers(users_pb2.ListUsersRequest())]
    assert names == ["Ada"]


def test_health_and_reflection_are_served() -> None:
    async def body() -> None:
        registered = functools.partial(register, store=UserStore(), instance=INSTANCE)
        async with channel_for(registered) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "demo.v1.Users"):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

    asyncio.run(body())
