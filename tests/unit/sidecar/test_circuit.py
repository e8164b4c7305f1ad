"""Circuit breaking (sidecar/circuit.py, sidecar/clusters.py, the Guarded picker of
sidecar/balancer.py) on a fake clock: the breaker's closed/open/half-open cycle, connection-pool
limits, and the balancer skipping ejected endpoints; the DestinationRule fields compiled."""

from __future__ import annotations

import random
import ssl
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from sidecar.balancer import Balancer
from sidecar.call import CallHead
from sidecar.circuit import BreakerConfig, BreakerState, CircuitBreaker, ConnectionLimits, check_limits
from sidecar.clusters import ClusterStates, Resilience
from sidecar.config import Address, Endpoint, Policy, ServiceEntry
from sidecar.errors import CircuitOpen, NoRoute, Overflow, status_for
from sidecar.grpc_wire import Code
from sidecar.h2.stream import Limits
from sidecar.outlier import FailurePercentageEjection, OutlierConfig, SuccessRateEjection
from sidecar.pool import Pools
from sidecar.traffic import PolicyRejected, compile_traffic
from tests.support.meshctl_runner import FakeClock

CONFIG = BreakerConfig(consecutive_failures=3, open_time=5.0, half_open_calls=2)


def open_breaker(clock: FakeClock) -> CircuitBreaker:
    breaker = CircuitBreaker(CONFIG, clock)
    for _ in range(3):
        breaker.admit("users")
        breaker.record(Code.UNAVAILABLE)
    assert breaker.state is BreakerState.OPEN
    return breaker


def test_breaker_opens_after_consecutive_failures_and_fails_fast() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CONFIG, clock)
    for code in (Code.UNAVAILABLE, Code.INTERNAL, Code.OK, Code.NOT_FOUND, Code.UNAVAILABLE, Code.UNKNOWN):
        breaker.record(code)  # a success (or an app's NOT_FOUND) resets the run
    assert breaker.state is BreakerState.CLOSED
    breaker.record(Code.DEADLINE_EXCEEDED)
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen) as refused:
        breaker.admit("users")
    assert status_for(refused.value) == (Code.UNAVAILABLE, "circuit open for 'users': its calls keep failing")
    assert refused.value.retryable is False
    clock.now += 4.999
    with pytest.raises(CircuitOpen):
        breaker.admit("users")
    assert breaker.as_json() == {"state": "open", "opens": 1, "rejected": 2}


def test_half_open_lets_limited_probes_through_and_closes_when_they_succeed() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.now += 5.0
    breaker.admit("users")
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.admit("users")
    with pytest.raises(CircuitOpen, match="half-open"):
        breaker.admit("users")  # only half_open_calls probes
    breaker.record(Code.OK)
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record(Code.OK)
    assert breaker.state is BreakerState.CLOSED
    for _ in range(10):
        breaker.admit("users")


def test_a_failed_probe_opens_the_breaker_again() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.now += 5.0
    breaker.admit("users")
    breaker.record(Code.UNAVAILABLE)
    assert breaker.state is BreakerState.OPEN
    assert breaker.opens == 2
    with pytest.raises(CircuitOpen, match="circuit open"):
        breaker.admit("users")
    clock.now += 5.0
    breaker.admit("users")
    assert breaker.state is BreakerState.HALF_OPEN


def test_probes_that_never_report_do_not_hold_the_breaker_half_open_forever() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.now += 5.0
    breaker.admit("users")
    breaker.admit("users")
    clock.now += 5.0
    breaker.admit("users")  # a new round of probes


@dataclass
class StubPool:
    flying: int = 0
    queued: int = 0

    def in_flight(self) -> int:
        return self.flying

    def waiting(self) -> int:
        return self.queued


def test_connection_limits_count_calls_in_flight_and_waiting_across_the_clusters_pools() -> None:
    limits = ConnectionLimits(max_requests=4, max_pending=2)
    pools: list[Any] = [StubPool(2, 1), StubPool(1, 0)]
    check_limits(limits, pools, "users")  # 3 in flight: the 4th may go
    pools[1].flying = 2
    with pytest.raises(Overflow) as over:
        check_limits(limits, pools, "users")
    assert over.value.kind == "requests"
    assert over.value.retryable is False
    assert status_for(over.value) == (
        Code.UNAVAILABLE,
        "too many calls to 'users' in flight (4; connectionPool.http.http2MaxRequests is 4)",
    )
    pools[:] = [StubPool(0, 1), StubPool(0, 1)]
    with pytest.raises(Overflow, match="http1MaxPendingRequests is 2") as over:
        check_limits(limits, pools, "users")
    assert over.value.kind == "pending"
    check_limits(ConnectionLimits(), [StubPool(10**6, 10**6)], "users")  # 0: no limit


# ---------------------------------------------------------------- through the balancer

ENDPOINTS = tuple(Endpoint(Address(f"10.0.1.{i}", 15006), {"version": "v1"}) for i in range(1, 4))
SERVICES = {"users": ServiceEntry("users", ("demo.v1.Users",), ENDPOINTS)}


def rule(traffic_policy: dict[str, Any], subsets: list[dict[str, Any]] | None = None) -> Policy:
    spec: dict[str, Any] = {"host": "users", "trafficPolicy": traffic_policy}
    if subsets is not None:
        spec["subsets"] = subsets
    return Policy("DestinationRule", "default", "users", spec)


def balancer(policy: Policy, clock: FakeClock) -> tuple[Balancer, ClusterStates]:
    traffic = compile_traffic([policy], SERVICES)
    states = ClusterStates(clock=clock, rand=random.Random(3))
    states.sync(
        (key, cluster.resilience, [ep.address for ep in cluster.endpoints])
        for key, cluster in traffic.clusters.items()
    )
    pools = Pools(Limits(), ssl.create_default_context())
    return Balancer(traffic, pools, random.Random(3), states), states


def head() -> CallHead:
    return CallHead("/demo.v1.Users/GetUser", "users", (), None, None, service="users")


def test_the_balancer_skips_ejected_endpoints_and_gets_them_back() -> None:
    clock = FakeClock()
    policy = rule(
        {"outlierDetection": {"consecutive5xxErrors": 2, "interval": "1s", "baseEjectionTime": "3s"}}
    )
    pick, states = balancer(policy, clock)
    bad = str(ENDPOINTS[0].address)
    for _ in range(6):
        target = pick(head())
        assert target.report is not None
        target.report(Code.UNAVAILABLE if str(target.pool.address) == bad else Code.OK)
    assert states.get(("users", None)).unavailable() == {bad}  # type: ignore[union-attr]
    picked = Counter(str(pick(head()).pool.address) for _ in range(60))
    assert bad not in picked
    assert set(picked.values()) == {30}
    for _ in range(3):
        clock.now += 1.0
        states.sweep_due()
    picked = Counter(str(pick(head()).pool.address) for _ in range(60))
    assert picked[bad] == 20


def test_every_endpoint_ejected_fails_fast_with_unavailable() -> None:
    clock = FakeClock()
    pick, _ = balancer(
        rule({"outlierDetection": {"consecutive5xxErrors": 1, "maxEjectionPercent": 100}}), clock
    )
    for _ in range(3):
        target = pick(head())
        assert target.report is not None
        target.report(Code.INTERNAL)
    with pytest.raises(NoRoute) as refused:
        pick(head())
    assert status_for(refused.value) == (
        Code.UNAVAILABLE,
        "no endpoint of service 'users' can take calls: 3 ejected by outlier detection",
    )


def test_the_breaker_is_per_cluster_and_sees_every_endpoints_outcomes() -> None:
    clock = FakeClock()
    policy = rule({"circuitBreaker": {"consecutiveFailures": 3, "openTime": "2s", "halfOpenCalls": 1}})
    pick, states = balancer(policy, clock)
    for _ in range(3):  # three different endpoints, each failing once
        target = pick(head())
        assert target.report is not None
        target.report(Code.UNAVAILABLE)
    with pytest.raises(CircuitOpen):
        pick(head())
    clock.now += 2.0
    probe = pick(head())
    with pytest.raises(CircuitOpen):
        pick(head())
    assert probe.report is not None
    probe.report(Code.OK)
    pick(head())
    state = states.get(("users", None))
    assert state is not None
    assert state.as_json()["circuit"] == {"state": "closed", "opens": 1, "rejected": 2}


def test_destination_rule_fields_compile_with_subsets_replacing_blocks() -> None:
    policy = rule(
        {
            "connectionPool": {
                "http": {"http2MaxRequests": 10, "http1MaxPendingRequests": 2, "maxRetries": 3}
            },
            "outlierDetection": {
                "consecutiveErrors": 7,
                "consecutiveGatewayErrors": 2,
                "interval": "500ms",
                "baseEjectionTime": "10s",
                "maxEjectionTime": "1m",
                "maxEjectionPercent": 34,
                "successRateEjection": {"stdevFactor": 1, "minimumHosts": 3},
                "failurePercentageEjection": {"threshold": 50, "requestVolume": 10},
            },
            "circuitBreaker": {"consecutiveFailures": 20},
        },
        [
            {"name": "v1", "labels": {"version": "v1"}, "trafficPolicy": {"connectionPool": {"http": {}}}},
        ],
    )
    traffic = compile_traffic([policy], SERVICES)
    whole = traffic.clusters[("users", None)].resilience
    assert whole == Resilience(
        ConnectionLimits(10, 2, 3),
        OutlierConfig(
            consecutive_errors=7,
            consecutive_gateway_errors=2,
            interval=0.5,
            base_ejection_time=10.0,
            max_ejection_time=60.0,
            max_ejection_percent=34,
            success_rate=SuccessRateEjection(stdev_factor=1.0, minimum_hosts=3),
            failure_percentage=FailurePercentageEjection(threshold=50, request_volume=10),
        ),
        BreakerConfig(consecutive_failures=20),
    )
    v1 = traffic.clusters[("users", "v1")].resilience
    assert v1 == Resilience(ConnectionLimits(), whole.outlier, whole.breaker)
    assert compile_traffic([rule({})], SERVICES).clusters[("users", None)].resilience.empty


@pytest.mark.parametrize(
    ("traffic_policy", "path"),
    [
        ({"outlierDetection": {"interval": "soon"}}, "trafficPolicy.outlierDetection.interval"),
        (
            {"outlierDetection": {"maxEjectionPercent": 101}},
            "trafficPolicy.outlierDetection.maxEjectionPercent",
        ),
        (
            {"outlierDetection": {"successRateEjection": {"stdevFactor": 0}}},
            "trafficPolicy.outlierDetection.successRateEjection.stdevFactor",
        ),
        (
            {"connectionPool": {"http": {"http2MaxRequests": "10"}}},
            "trafficPolicy.connectionPool.http.http2MaxRequests",
        ),
        ({"circuitBreaker": {"halfOpenCalls": 0}}, "trafficPolicy.circuitBreaker.halfOpenCalls"),
    ],
)
def test_unusable_fields_are_rejected_naming_the_field(traffic_policy: dict[str, Any], path: str) -> None:
    with pytest.raises(PolicyRejected) as rejected:
        compile_traffic([rule(traffic_policy)], SERVICES)
    assert rejected.value.path == f"policies[0].spec.{path}"
