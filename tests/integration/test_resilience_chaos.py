"""Endpoint-side resilience with real processes: a control plane, three echo servers behind their
own sidecars and a client sidecar. One echo server is slowed to 2 s and outlier detection moves
the traffic away within the configured interval; one turning NOT_SERVING (as in a graceful
shutdown) is drained by the health checks; concurrent calls over `connectionPool`'s
http2MaxRequests fail fast; a destination whose every endpoint fails opens its breaker. The
client sidecar's /clusters and /metrics show what happened."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import grpc
import pytest

from tests.support.chaos_mesh import TIMEOUT, ChaosMesh, running_chaos_mesh
from tests.support.clients import ECHO, channel, control
from tests.support.mesh import wait_for

INTERVAL = 1.0  # outlierDetection.interval, seconds
ECHOES = 3


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosMesh]:
    with running_chaos_mesh(tmp_path_factory.mktemp("chaos"), ECHOES) as mesh:
        yield mesh


def unary(ch: Any, timeout: float) -> grpc.StatusCode:
    try:
        ch.unary_unary(ECHO + "Unary")(b"ping", timeout=timeout)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
        return code
    return grpc.StatusCode.OK


def test_a_slowed_endpoint_is_ejected_within_the_interval_and_traffic_moves_away(chaos: ChaosMesh) -> None:
    chaos.apply(
        {
            "outlierDetection": {
                "consecutive5xxErrors": 0,  # only the interval's failure-percentage check
                "interval": f"{INTERVAL:g}s",
                "baseEjectionTime": "60s",
                "maxEjectionPercent": 34,
                "failurePercentageEjection": {"threshold": 50, "minimumHosts": ECHOES, "requestVolume": 3},
            }
        }
    )
    slow = chaos.echoes[0]
    with channel(chaos.client.outbound) as ch, ThreadPoolExecutor(max_workers=12) as pool:
        assert [unary(ch, 5) for _ in range(12)] == [grpc.StatusCode.OK] * 12
        chaos.fault(slow, delay_ms=2000)
        started = time.monotonic()

        def ejected() -> list[str]:
            return [c["address"] for c in chaos.clusters()["clusters"] if c["ejected_from"] == ["echo"]]

        # Calls keep coming (each waits at most 300 ms) until the sweep ejects the slow one.
        while not ejected():
            assert time.monotonic() - started < 5 * INTERVAL, "no ejection after five intervals"
            list(pool.map(lambda _: unary(ch, 0.3), range(12)))
        took = time.monotonic() - started
        assert ejected() == [slow.inbound]
        # The failing calls needed one volley (0.3 s) to reach requestVolume; the sweep comes at
        # most one interval later. Twice the interval leaves room for a loaded machine.
        assert took <= 2 * INTERVAL + 0.3 * 2, took
        codes = list(pool.map(lambda _: unary(ch, 1.0), range(60)))
        assert codes == [grpc.StatusCode.OK] * 60  # none went to the 2 s endpoint
    [destination] = chaos.clusters()["destinations"]
    assert destination["service"] == "echo"
    assert destination["ejections"] == 1
    assert destination["endpoints"][slow.inbound]["ejected"] is True
    assert destination["endpoints"][slow.inbound]["ejected_for_seconds"] > 50
    metrics = chaos.metrics()
    # The callers gave up at their deadline, a hair before the sidecar's own timer: counted (and
    # judged by outlier detection) as DEADLINE_EXCEEDED, not as a caller's CANCELLED.
    statuses = {
        line.partition('grpc_response_status="')[2].partition('"')[0]
        for line in metrics.splitlines()
        if line.startswith("istio_requests_total{")
    }
    assert "4" in statuses and "1" not in statuses, statuses
    assert (
        'grpc_mesh_outlier_ejections_total{destination_service="echo",destination_subset=""} 1.0' in metrics
    )
    assert 'grpc_mesh_outlier_ejected{destination_service="echo",destination_subset=""} 1.0' in metrics
    chaos.fault(slow)  # healed; the next rule (no outlierDetection) forgets the ejection


def test_the_call_over_http2_max_requests_fails_fast_and_is_counted(chaos: ChaosMesh) -> None:
    limit = 4
    chaos.apply({"connectionPool": {"http": {"http2MaxRequests": limit}}})
    assert chaos.clusters()["destinations"][0]["overflows"] == {"requests": 0, "pending": 0, "retries": 0}
    with channel(chaos.client.outbound) as ch, ThreadPoolExecutor(max_workers=limit) as pool:
        sleep = ch.unary_unary(ECHO + "Sleep")
        held: list[Future[Any]] = [
            pool.submit(sleep, control({"ms": 3000, "id": f"held-{i}"}), timeout=20) for i in range(limit)
        ]

        def all_in_flight() -> bool:
            return sum(c["in_flight"] for c in chaos.clusters()["clusters"]) == limit

        wait_for(all_in_flight, TIMEOUT, f"{limit} calls in flight")
        with pytest.raises(grpc.RpcError) as refused:
            ch.unary_unary(ECHO + "Unary")(b"one too many", timeout=20)
        assert not any(f.done() for f in held)  # it failed while the others were still running
        error: Any = refused.value
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "http2MaxRequests is 4" in error.details()
        wait(held)
        assert all(f.result() for f in held)
        assert unary(ch, 5) == grpc.StatusCode.OK  # room again
    assert chaos.clusters()["destinations"][0]["overflows"] == {"requests": 1, "pending": 0, "retries": 0}
    assert (
        'grpc_mesh_overflows_total{destination_service="echo",destination_subset="",limit="requests"} 1.0'
        in chaos.metrics()
    )


def test_every_endpoint_failing_opens_the_breaker_which_fails_fast(chaos: ChaosMesh) -> None:
    chaos.apply({"circuitBreaker": {"consecutiveFailures": 6, "openTime": "60s", "halfOpenCalls": 1}})
    for echo in chaos.echoes:
        chaos.fault(echo, code=grpc.StatusCode.UNAVAILABLE.value[0])
    try:
        with channel(chaos.client.outbound) as ch:
            messages = []
            for _ in range(8):
                with pytest.raises(grpc.RpcError) as failed:
                    ch.unary_unary(ECHO + "Unary")(b"x", timeout=5)
                error: Any = failed.value
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                messages.append(error.details())
        assert messages[:6] == ["fault set by the test (Fault)"] * 6
        assert messages[6:] == ["circuit open for 'echo': its calls keep failing"] * 2
        [destination] = chaos.clusters()["destinations"]
        assert destination["circuit"] == {"state": "open", "opens": 1, "rejected": 2}
        metrics = chaos.metrics()
        assert 'grpc_mesh_circuit_state{destination_service="echo",destination_subset=""} 1.0' in metrics
        labels = 'destination_service="echo",destination_subset="",limit="circuit_open"'
        assert f"grpc_mesh_overflows_total{{{labels}}} 2.0" in metrics
    finally:
        for echo in chaos.echoes:
            chaos.fault(echo)


def test_an_endpoint_turning_not_serving_is_drained_by_health_checks(chaos: ChaosMesh) -> None:
    # Asking about test.Echo: an app NOT_SERVING as a whole ("") also leaves the registry (its
    # sidecar's sidecar/app_health.py tells the control plane); the active checks see both.
    check = {"interval": "200ms", "timeout": "200ms", "unhealthyThreshold": 2, "serviceName": "test.Echo"}
    chaos.apply({"healthCheck": check})
    draining = chaos.echoes[1]

    def unhealthy() -> list[str]:
        return [c["address"] for c in chaos.clusters()["clusters"] if c["unhealthy_in"] == ["echo"]]

    assert unhealthy() == []
    # NOT_SERVING, and slow: a new call sent there would miss its 1 s deadline.
    chaos.fault(draining, serving=False, delay_ms=2000)
    try:
        wait_for(lambda: unhealthy() == [draining.inbound], TIMEOUT, "the health checks to find it")
        with channel(chaos.client.outbound) as ch, ThreadPoolExecutor(max_workers=12) as pool:
            codes = list(pool.map(lambda _: unary(ch, 1.0), range(60)))
        assert codes == [grpc.StatusCode.OK] * 60
        [destination] = chaos.clusters()["destinations"]
        assert destination["endpoints"][draining.inbound]["health"]["healthy"] is False
        assert destination["endpoints"][draining.inbound]["health"]["last_check"] == "NOT_SERVING"
        healthy = destination["endpoints"][chaos.echoes[0].inbound]["health"]
        assert healthy["healthy"] is True
        assert healthy["last_check"] == "SERVING"
    finally:
        chaos.fault(draining)
    wait_for(lambda: unhealthy() == [], TIMEOUT, "it to be healthy again once SERVING")
