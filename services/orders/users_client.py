"""How orders asks the users service (through its local sidecar) whether a user exists."""

from __future__ import annotations

from typing import Any

import grpc
from demo.v1 import users_pb2, users_pb2_grpc

from services.common.errors import NotFound, UpstreamError
from services.common.identity import Instance

# Headers of the incoming call that the outgoing call carries on, so a trace spans both hops.
PROPAGATED_HEADERS = ("traceparent", "tracestate")
DEFAULT_TIMEOUT = 5.0


def users_channel(target: str, authority: str) -> Any:
    """A plaintext channel to target whose calls carry :authority `authority` (the mesh's routing key)."""
    return grpc.aio.insecure_channel(target, options=[("grpc.default_authority", authority)])


class UsersClient:
    def __init__(self, channel: Any) -> None:
        self._stub = users_pb2_grpc.UsersStub(channel)

    async def check_user(self, user_id: str, incoming: Any) -> Instance:
        """Confirm the user exists; returns the users instance that answered.

        `incoming` is the servicer context of the call being handled: its deadline and trace headers
        carry over to the users call.
        """
        remaining = incoming.time_remaining()
        metadata = tuple(
            (key, value) for key, value in incoming.invocation_metadata() or () if key in PROPAGATED_HEADERS
        )
        try:
            response = await self._stub.GetUser(
                users_pb2.GetUserRequest(id=user_id),
                timeout=DEFAULT_TIMEOUT if remaining is None else remaining,
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"user {user_id!r} does not exist") from None
            raise UpstreamError(error.code(), f"users service: {error.details()}") from None
        served_by = response.served_by
        return Instance(served_by.service, served_by.version, served_by.instance)
