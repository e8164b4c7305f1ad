"""AppHealthWatcher against a real grpc.aio app on loopback: every health change is reported; a
down app is not serving; an app without grpc.health.v1 is taken as serving."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sidecar.app_health import AppHealthWatcher
from sidecar.config import Address
from sidecar.discovery import Backoff
from tests.support.discovery import eventually

DEADLINE = 10.0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


async def no_wait(_: float) -> None:
    await asyncio.sleep(0)


def test_health_changes_are_reported_and_a_stopped_app_is_not_serving() -> None:
    async def scenario() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        reports: list[bool] = []
        watcher = AppHealthWatcher(
            Address("127.0.0.1", port), reports.append, backoff=Backoff(initial=0.01, maximum=0.05)
        )
        watcher.start()
        try:
            await eventually(lambda: reports == [True], DEADLINE, "serving")
            await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            await eventually(lambda: reports == [True, False], DEADLINE, "not serving")
            await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
            await eventually(lambda: reports == [True, False, True], DEADLINE, "serving again")
            await server.stop(None)
            await eventually(lambda: reports == [True, False, True, False], DEADLINE, "app gone")
            assert watcher.serving is False
        finally:
            await watcher.stop()
            await server.stop(None)

    run(scenario)


def test_an_unreachable_app_is_not_serving_until_it_answers() -> None:
    async def scenario() -> None:
        reports: list[bool] = []
        # Port 1 on loopback: nothing listens there.
        watcher = AppHealthWatcher(Address("127.0.0.1", 1), reports.append, sleep=no_wait)
        watcher.start()
        try:
            await eventually(lambda: reports == [False], DEADLINE, "not serving")
        finally:
            await watcher.stop()
        assert reports == [False]  # reported once, not on every retry

    run(scenario)


def test_an_app_without_the_health_service_is_taken_as_serving() -> None:
    async def scenario() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        reports: list[bool] = []
        watcher = AppHealthWatcher(Address("127.0.0.1", port), reports.append, sleep=no_wait)
        watcher.start()
        try:
            await eventually(lambda: watcher._task is not None and watcher._task.done(), DEADLINE, "give up")
            assert reports == [True]
        finally:
            await watcher.stop()
            await server.stop(None)

    run(scenario)
