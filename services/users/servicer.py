"""demo.v1.Users over a UserStore: converts messages, stamps every reply with the serving instance."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from demo.v1 import users_pb2, users_pb2_grpc

from services.common.errors import reported_as_status
from services.common.identity import Instance
from services.users.store import User, UserStore

SERVICE_NAME: str = users_pb2.DESCRIPTOR.services_by_name["Users"].full_name


def to_message(user: User) -> Any:
    return users_pb2.User(id=user.id, name=user.name, email=user.email)


def from_message(message: Any) -> User:
    return User(id=message.id, name=message.name, email=message.email)


class UsersServicer:
    """Implements every demo.v1.Users method; registered with add_UsersServicer_to_server."""

    def __init__(self, store: UserStore, instance: Instance) -> None:
        self._store = store
        self._metadata = instance.metadata
        self._served_by = users_pb2.ServedBy(
            service=instance.service, version=instance.version, instance=instance.instance
        )

    async def GetUser(self, request: Any, context: Any) -> Any:
        await context.send_initial_metadata(self._metadata)
        async with reported_as_status(context):
            user = self._store.get(request.id)
        return users_pb2.GetUserResponse(user=to_message(user), served_by=self._served_by)

    async def CreateUser(self, request: Any, context: Any) -> Any:
        await context.send_initial_metadata(self._metadata)
        async with reported_as_status(context):
            user = self._store.create(request.name, request.email, request.id)
        return users_pb2.CreateUserResponse(user=to_message(user), served_by=self._served_by)

    async def UpdateUser(self, request: Any, context: Any) -> Any:
        await context.send_initial_metadata(self._metadata)
        async with reported_as_status(context):
            user = self._store.update(
                request.id,
                name=request.name if request.HasField("name") else None,
                email=request.email if request.HasField("email") else None,
            )
        return users_pb2.UpdateUserResponse(user=to_message(user), served_by=self._served_by)

    async def DeleteUser(self, request: Any, context: Any) -> Any:
        await context.send_initial_metadata(self._metadata)
        async with reported_as_status(context):
            self._store.delete(request.id)
        return users_pb2.DeleteUserResponse(served_by=self._served_by)

    async def ListUsers(self, request: Any, context: Any) -> AsyncIterator[Any]:
        await context.send_initial_metadata(self._metadata)
        for user in self._store.list(request.limit):
            yield users_pb2.ListUsersResponse(user=to_message(user), served_by=self._served_by)

    async def ImportUsers(self, request_iterator: AsyncIterator[Any], context: Any) -> Any:
        await context.send_initial_metadata(self._metadata)
        users = [from_message(request.user) async for request in request_iterator]
        async with reported_as_status(context):
            count = self._store.put_all(users)
        return users_pb2.ImportUsersResponse(imported_count=count, served_by=self._served_by)

    async def SyncUsers(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        await context.send_initial_metadata(self._metadata)
        async for request in request_iterator:
            async with reported_as_status(context):
                user, created = self._store.put(from_message(request.user))
            yield users_pb2.SyncUsersResponse(
                user=to_message(user), created=created, served_by=self._served_by
            )


def register(server: Any, store: UserStore, instance: Instance) -> Sequence[str]:
    """Add the Users service to a grpc.aio server; returns the gRPC service names it serves."""
    users_pb2_grpc.add_UsersServicer_to_server(UsersServicer(store, instance), server)
    return [SERVICE_NAME]
