"""Retries, timeouts, fault injection and mirroring through a real sidecar (gRFC A6 with Istio's
VirtualService fields): real TLS, real gRPC servers failing as the test scripts them
(tests/support/flaky.py)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from sidecar.config import Policy
from tests.support.flaky import (
    Fail,
    FailAfterMessage,
    FlakyMesh,
    Ok,
    Script,
    Sleep,
    flaky_mesh,
    route,
    virtual_service,
)

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


async def failure(mesh: FlakyMesh, timeout: float = 10.0) -> grpc.aio.AioRpcError:
    async with mesh.channel() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await mesh.call(channel, timeout=timeout)
    return info.value


def previous_attempts(mesh: FlakyMesh) -> list[str | None]:
    return [seen.metadata.get("grpc-previous-rpc-attempts") for seen in mesh.script.seen]


def test_attempts_are_capped_at_five_and_each_says_how_many_came_before(tmp_path: Path) -> None:
    async def scenario() -> None:
        script = Script(queue=[Fail(UNAVAILABLE)] * 10)
        policy = virtual_service(route(retries={"attempts": 7, "retryOn": "unavailable"}))
        async with flaky_mesh(tmp_path, [policy], script=script) as mesh:
            error = await failure(mesh)
            assert error.code() == UNAVAILABLE
            assert error.details() == "scripted failure"  # the last attempt's own status
            assert previous_attempts(mesh) == [None, "1", "2", "3", "4"]
            assert mesh.stat("outbound.retries") == 4
            assert mesh.stat("outbound.retry_exhausted") == 1

    run(scenario)


def test_only_retry_on_codes_are_retried(tmp_path: Path) -> None:
    async def scenario() -> None:
        script = Script(queue=[Fail(grpc.StatusCode.INTERNAL), Fail(UNAVAILABLE), Ok()])
        policy = virtual_service(route(retries={"attempts": 3, "retryOn": "unavailable"}))
        async with flaky_mesh(tmp_path, [policy], script=script) as mesh:
            assert (await failure(mesh)).code() == grpc.StatusCode.INTERNAL
            assert len(mesh.script.seen) == 1
            async with mesh.channel() as channel:
                assert await mesh.call(channel, b"again") == [b"again"]
            assert previous_attempts(mesh) == [None, None, "1"]

    run(scenario)


def test_no_retry_once_a_message_has_arrived(tmp_path: Path) -> None:
    async def scenario() -> None:
        script = Script(queue=[FailAfterMessage(UNAVAILABLE)])
        policy = virtual_service(route(retries={"attempts": 3, "retryOn": "unavailable"}))
        async with flaky_mesh(tmp_path, [policy], script=script) as mesh, mesh.channel() as channel:
            call = channel.unary_stream("/test.Flaky/Call")(b"body", timeout=10)
            assert await call.read() == b"body"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call.read()
            assert info.value.code() == UNAVAILABLE
            assert len(mesh.script.seen) == 1

    run(scenario)


def test_server_pushback_sets_the_wait_and_negative_or_garbage_stops_retries(tmp_path: Path) -> None:
    async def scenario() -> None:
        script = Script(queue=[Fail(UNAVAILABLE, pushback="300"), Ok()])
        policy = virtual_service(route(retries={"attempts": 3, "retryOn": "unavailable"}))
        async with flaky_mesh(tmp_path, [policy], script=script) as mesh:
            async with mesh.channel() as channel:
                assert await mesh.call(channel) == [b"ping"]
            first, second = mesh.script.seen
            assert second.at - first.at >= 0.3
            for value in ("-1", "soon"):
                mesh.script.seen.clear()
                mesh.script.queue[:] = [Fail(UNAVAILABLE, pushback=value), Ok()]
                assert (await failure(mesh)).code() == UNAVAILABLE
                assert len(mesh.script.seen) == 1
            assert mesh.stat("outbound.retry_pushback_stop") == 2

    run(scenario)


def test_retries_never_outlive_the_route_timeout(tmp_path: Path) -> None:
    async def scenario() -> None:
        script = Script(queue=[Fail(UNAVAILABLE, pushback="400")] * 10)
        policy = virtual_service(route(timeout="1s", retries={"attempts": 4, "retryOn": "unavailable"}))
        async with flaky_mesh(tmp_path, [policy], script=script) as mesh:
            start = time.monotonic()
            await failure(mesh)
            took = time.monotonic() - start
            assert took < 1.5
            assert 2 <= len(mesh.script.seen) <= 3
            assert all(seen.at - start < 1.0 for seen in mesh.script.seen)
            assert mesh.stat("outbound.retry_deadline") == 1

    run(scenario)


def test_route_timeout_is_the_deadline_and_the_upstream_is_told(tmp_path: Path) -> None:
    async def scenario() -> None:
        script = Script(queue=[Sleep(3.0)])
        policy = virtual_service(route(timeout="300ms"))
        async with flaky_mesh(tmp_path, [policy], script=script) as mesh:
            start = time.monotonic()
            error = await failure(mesh, timeout=10.0)
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - start < 2.0  # the caller gave 10 s; the route 300 ms
            assert len(mesh.script.seen) == 1

    run(scenario)


def test_per_try_timeout_retries_a_slow_attempt(tmp_path: Path) -> None:
    async def scenario() -> None:
        script = Script(queue=[Sleep(3.0), Ok()])
        policy = virtual_service(route(retries={"attempts": 2, "perTryTimeout": "200ms"}))
        async with flaky_mesh(tmp_path, [policy], script=script) as mesh:
            start = time.monotonic()
            async with mesh.channel() as channel:
                assert await mesh.call(channel) == [b"ping"]
            assert time.monotonic() - start < 2.0
            assert previous_attempts(mesh) == [None, "1"]

    run(scenario)


def test_a_retry_goes_to_another_endpoint(tmp_path: Path) -> None:
    async def scenario() -> None:
        policy = virtual_service(route(retries={"attempts": 2, "retryOn": "unavailable"}))
        async with flaky_mesh(tmp_path, [policy], endpoints=3) as mesh:
            bad = mesh.ports[0]
            mesh.script.by_port[bad] = lambda: Fail(UNAVAILABLE)
            async with mesh.channel() as channel:
                for _ in range(30):
                    assert await mesh.call(channel) == [b"ping"]
            seen = mesh.script.seen
            for before, after in itertools.pairwise(seen):
                if before.port == bad:
                    assert after.port != bad
                    assert after.metadata.get("grpc-previous-rpc-attempts") == "1"
            assert sum(s.port == bad for s in seen) >= 10  # it keeps its share of first attempts

    run(scenario)


def test_one_of_three_endpoints_killed_under_load_loses_no_call(tmp_path: Path) -> None:
    async def scenario() -> None:
        policy = virtual_service(route(retries={"attempts": 2, "retryOn": "unavailable,cancelled"}))
        async with flaky_mesh(tmp_path, [policy], endpoints=3) as mesh:
            victim = mesh.ports[1]
            failures: list[BaseException] = []
            done = 0

            async def worker(channel: grpc.aio.Channel) -> None:
                nonlocal done
                for _ in range(100):
                    try:
                        await mesh.call(channel)
                    except grpc.aio.AioRpcError as exc:
                        failures.append(exc)
                    done += 1
                    if done == 300:  # a third of the way in, the endpoint's server dies
                        mesh.script.by_port[victim] = lambda: Sleep(5.0)
                        asyncio.get_running_loop().create_task(kill(victim))

            async def kill(port: int) -> None:
                await mesh.servers[mesh.ports.index(port)].stop(None)

            async with mesh.channel() as channel:
                await asyncio.gather(*(worker(channel) for _ in range(10)))
            assert done == 1000
            assert failures == []  # ≥ 99.9% of 1,000 calls
            assert mesh.stat("outbound.retries") + mesh.stat("outbound.transparent_retries") > 0

    run(scenario)


def test_fault_abort_fails_about_the_configured_share_with_the_configured_code(tmp_path: Path) -> None:
    async def scenario() -> None:
        fault = {"abort": {"grpcStatus": "RESOURCE_EXHAUSTED", "percentage": {"value": 50}}}
        async with flaky_mesh(tmp_path, [virtual_service(route(fault=fault))]) as mesh:
            codes = []
            async with mesh.channel() as channel:
                for _ in range(400):
                    try:
                        await mesh.call(channel)
                        codes.append(grpc.StatusCode.OK)
                    except grpc.aio.AioRpcError as exc:
                        codes.append(exc.code())
            aborted = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert aborted + codes.count(grpc.StatusCode.OK) == 400
            assert 160 <= aborted <= 240  # 50% ± 5 standard deviations of a binomial(400, ½)
            assert mesh.stat("outbound.fault_aborted") == aborted
            assert len(mesh.script.seen) == 400 - aborted  # an aborted call never leaves the sidecar

    run(scenario)


def test_fault_delay_adds_the_configured_time(tmp_path: Path) -> None:
    async def scenario() -> None:
        fault = {"delay": {"fixedDelay": "250ms", "percentage": {"value": 100}}}
        async with flaky_mesh(tmp_path, [virtual_service(route(fault=fault))]) as mesh:
            async with mesh.channel() as channel:
                start = time.monotonic()
                assert await mesh.call(channel) == [b"ping"]
                assert time.monotonic() - start >= 0.25
            assert mesh.stat("outbound.fault_delayed") == 1

    run(scenario)


MIRROR_RULE = Policy(
    "DestinationRule",
    "default",
    "flaky",
    {
        "host": "flaky",
        "subsets": [
            {"name": "live", "labels": {"role": "live"}},
            {"name": "shadow", "labels": {"role": "shadow"}},
        ],
    },
)


def mirrored(percent: float) -> list[Policy]:
    return [
        MIRROR_RULE,
        virtual_service(
            {
                "route": [{"destination": {"host": "flaky", "subset": "live"}}],
                "mirror": {"host": "flaky", "subset": "shadow"},
                "mirrorPercentage": {"value": percent},
            }
        ),
    ]


ROLES = ({"role": "live"}, {"role": "shadow"})


def test_the_mirror_gets_copies_at_the_configured_share(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with flaky_mesh(tmp_path, mirrored(50), endpoints=2, labels=ROLES) as mesh:
            live, shadow = mesh.ports
            async with mesh.channel() as channel:
                for i in range(200):
                    assert await mesh.call(channel, f"call {i}".encode()) == [f"call {i}".encode()]

            def copies() -> int:
                return sum(s.port == shadow for s in mesh.script.seen)

            await eventually(lambda: copies() == mesh.stat("outbound.mirror_ok"))
            assert sum(s.port == live for s in mesh.script.seen) == 200
            assert 70 <= copies() <= 130  # 50% of 200, ± 4 standard deviations
            assert mesh.stat("outbound.mirrored") == copies()

    run(scenario)


def test_a_failing_or_slow_mirror_changes_nothing_for_the_caller(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with flaky_mesh(tmp_path, mirrored(100), endpoints=2, labels=ROLES) as mesh:
            shadow = mesh.ports[1]
            async with mesh.channel() as channel:
                mesh.script.by_port[shadow] = lambda: Fail(grpc.StatusCode.INTERNAL)
                for _ in range(20):
                    assert await mesh.call(channel) == [b"ping"]
                await eventually(lambda: mesh.stat("outbound.mirror_failed") == 20)
                mesh.script.by_port[shadow] = lambda: Sleep(2.0)
                start = time.monotonic()
                for _ in range(5):
                    assert await mesh.call(channel) == [b"ping"]
                assert time.monotonic() - start < 2.0  # five calls did not wait for a 2 s mirror
                await mesh.servers[1].stop(None)  # and a mirror that is gone
                for _ in range(5):
                    assert await mesh.call(channel) == [b"ping"]

    run(scenario)


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_connection_pool_max_retries_bounds_the_calls_retrying_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        rule = Policy(
            "DestinationRule",
            "default",
            "flaky",
            {"host": "flaky", "trafficPolicy": {"connectionPool": {"http": {"maxRetries": 1}}}},
        )
        policy = virtual_service(route(retries={"attempts": 2, "retryOn": "unavailable"}))
        script = Script(queue=[Fail(UNAVAILABLE)] * 3 + [Sleep(0.5)])
        async with flaky_mesh(tmp_path, [rule, policy], script=script) as mesh, mesh.channel() as channel:
            results = await asyncio.gather(*(mesh.call(channel) for _ in range(3)), return_exceptions=True)
            failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert [r for r in results if r == [b"ping"]] == [[b"ping"]]  # the one retry made
            assert [e.code() for e in failed] == [UNAVAILABLE, UNAVAILABLE]
            assert mesh.stat("outbound.retry_denied_max_retries") == 2
            assert len(mesh.script.seen) == 4

    run(scenario)
