"""The shared service lifecycle: ready file, graceful stop with health turning NOT_SERVING."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.identity import Instance
from services.common.server import bound_address, serve, write_ready_file
from services.users.servicer import register
from services.users.store import UserStore

INSTANCE = Instance("users", "v1", "users-v1-a")


def test_ready_file_replaces_whole_document_and_leaves_no_temporary(tmp_path: Path) -> None:
    ready = tmp_path / "run" / "ready.json"
    write_ready_file(ready, "127.0.0.1:1")
    write_ready_file(ready, "127.0.0.1:2")
    assert json.loads(ready.read_text()) == {"address": "127.0.0.1:2", "pid": os.getpid()}
    assert [p.name for p in ready.parent.iterdir()] == ["ready.json"]


def test_bound_address_keeps_the_host_as_written() -> None:
    assert bound_address("127.0.0.1:0", 4321) == "127.0.0.1:4321"
    assert bound_address("[::1]:0", 4321) == "[::1]:4321"


async def wait_for_file(path: Path, deadline_seconds: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.01)


def test_stop_turns_health_not_serving_then_exits_zero(tmp_path: Path) -> None:
    async def body() -> None:
        ready = tmp_path / "ready.json"
        stopping = asyncio.Event()
        serving = asyncio.create_task(
            serve(
                instance=INSTANCE,
                listen="127.0.0.1:0",
                register=functools.partial(register, store=UserStore(), instance=INSTANCE),
                ready_file=ready,
                grace=0.2,
                stopping=stopping,
            )
        )
        await wait_for_file(ready)
        address = json.loads(ready.read_text())["address"]
        async with grpc.aio.insecure_channel(address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="demo.v1.Users")
            )
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            stopping.set()
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await asyncio.wait_for(serving, timeout=10) == 0
            watch.cancel()

    asyncio.run(body())
