"""The call under test: demo.v1.Users/GetUser of one existing user, as h2load's request body and as
real gRPC calls (grpcio) that prove a path answers with status OK before it is measured."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import grpc
from demo.v1 import users_pb2, users_pb2_grpc

USER_ID = "bench-user"
METHOD_PATH = "/demo.v1.Users/GetUser"
CALL_TIMEOUT = 5.0


class PathBroken(RuntimeError):
    """A grpcio call through a path did not return OK with the expected user."""


def framed_request() -> bytes:
    """One gRPC length-prefixed message: flag 0 (uncompressed), 4-byte big-endian length, GetUserRequest."""
    message: bytes = users_pb2.GetUserRequest(id=USER_ID).SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


def write_request_body(path: Path) -> Path:
    path.write_bytes(framed_request())
    return path


def create_user(app_address: str) -> None:
    """Store the user every benchmarked call reads (directly at the app, once)."""
    with grpc.insecure_channel(app_address) as channel:
        stub = users_pb2_grpc.UsersStub(channel)
        stub.CreateUser(
            users_pb2.CreateUserRequest(id=USER_ID, name="Bench", email="bench@example.invalid"),
            timeout=CALL_TIMEOUT,
        )


@dataclass(frozen=True, slots=True)
class CheckResult:
    calls: int
    served_by: str


def check_path(address: str, calls: int = 5) -> CheckResult:
    """`calls` GetUser calls over plaintext h2 to `address`, each of which must be OK and name the user."""
    served_by = ""
    with grpc.insecure_channel(address) as channel:
        stub = users_pb2_grpc.UsersStub(channel)
        for i in range(calls):
            try:
                reply = stub.GetUser(users_pb2.GetUserRequest(id=USER_ID), timeout=CALL_TIMEOUT)
            except grpc.RpcError as err:
                code = err.code() if isinstance(err, grpc.Call) else None
                details = err.details() if isinstance(err, grpc.Call) else str(err)
                raise PathBroken(f"GetUser via {address}, call {i + 1}/{calls}: {code} {details}") from None
            if reply.user.id != USER_ID:
                raise PathBroken(f"GetUser via {address} returned user {reply.user.id!r}, not {USER_ID!r}")
            served_by = reply.served_by.instance
    return CheckResult(calls, served_by)
