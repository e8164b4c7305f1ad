"""sidecar.retry: A6's backoff, pushback and throttle, Envoy's retry budget, and the route policy
compiled from a VirtualService."""

from __future__ import annotations

import random

import pytest

from sidecar.config import Policy
from sidecar.grpc_wire import Code
from sidecar.retry import (
    DEFAULT_RETRY_ON,
    STOP,
    Destination,
    RetryLimits,
    RetryPolicy,
    backoff,
    pushback,
)
from sidecar.traffic import PolicyRejected, compile_traffic


def test_istio_attempts_count_retries_and_a6_caps_all_attempts_at_five() -> None:
    assert RetryPolicy.from_retries(2, DEFAULT_RETRY_ON, None).max_attempts == 3
    assert RetryPolicy.from_retries(7, DEFAULT_RETRY_ON, None).max_attempts == 5


def test_backoff_grows_to_the_cap_and_is_jittered_within_twenty_percent() -> None:
    policy = RetryPolicy(5, DEFAULT_RETRY_ON, initial_backoff=0.1, max_backoff=0.5, multiplier=2.0)
    rand = random.Random(1)
    for n, base in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (5, 0.5)]:
        gaps = [backoff(policy, n, rand) for _ in range(500)]
        assert base * 0.8 <= min(gaps) and max(gaps) <= base * 1.2
        assert max(gaps) - min(gaps) > base * 0.3  # really spread, not a constant


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (b"300", 0.3), (b"0", 0.0), (b"-1", STOP), (b"soon", STOP), (b"", STOP), (b"1.5", STOP)],
)
def test_pushback(value: bytes | None, expected: float | None) -> None:
    assert pushback(value) == expected


def test_retry_budget_is_twenty_percent_of_calls_in_flight_with_a_floor_of_three() -> None:
    dest = Destination(RetryLimits())
    dest.active = 10
    assert dest.budget() == 3
    dest.active = 100
    assert dest.budget() == 20
    dest.retries_active = 20
    assert dest.may_retry() == "budget"
    dest.retries_active = 19
    assert dest.may_retry() is None


def test_throttle_stops_retries_at_half_the_tokens_and_resumes_on_successes() -> None:
    dest = Destination(RetryLimits(throttle_max_tokens=10, throttle_token_ratio=0.5))
    failures = 0
    while dest.may_retry() is None:
        dest.attempt_failed()
        failures += 1
    assert failures == 5 and dest.tokens == 5  # stopped at ≤ maxTokens/2
    assert dest.may_retry() == "throttle"
    dest.call_succeeded()
    assert dest.may_retry() is None  # 5.5 > 5
    for _ in range(100):
        dest.call_succeeded()
    assert dest.tokens == 10  # never above the maximum


def test_no_throttle_unless_configured() -> None:
    dest = Destination(RetryLimits())
    for _ in range(100):
        dest.attempt_failed()
    assert dest.may_retry() is None


def _vs(http: dict[str, object]) -> Policy:
    route = {"route": [{"destination": {"host": "users"}}]}
    return Policy("VirtualService", "default", "users", {"hosts": ["users"], "http": [{**route, **http}]})


def test_a_route_policy_is_compiled_with_its_timeout_retries_fault_and_mirror() -> None:
    from sidecar.config import ServiceEntry

    services = {"users": ServiceEntry("users", (), ())}
    traffic = compile_traffic(
        [
            _vs(
                {
                    "timeout": "2s",
                    "retries": {
                        "attempts": 3,
                        "perTryTimeout": "500ms",
                        "retryOn": "unavailable,DEADLINE_EXCEEDED",
                    },
                    "fault": {
                        "delay": {"fixedDelay": "100ms", "percentage": {"value": 10}},
                        "abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 1.5}},
                    },
                    "mirror": {"host": "users"},
                }
            )
        ],
        services,
    )
    [route] = traffic.routes["users"]
    policy = route.policy
    assert policy is not None and policy.retry is not None and policy.fault is not None
    assert policy.timeout == 2.0
    assert policy.retry.max_attempts == 4 and policy.retry.per_try_timeout == 0.5
    assert policy.retry.retry_on == {Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED}
    assert (policy.fault.delay, policy.fault.delay_fraction) == (0.1, 0.1)
    assert (policy.fault.abort_code, policy.fault.abort_fraction) == (Code.UNAVAILABLE, 0.015)
    assert policy.mirror is not None and (policy.mirror.service, policy.mirror.fraction) == ("users", 1.0)


def test_a_plain_route_has_no_policy_and_bad_fields_are_refused_by_name() -> None:
    from sidecar.config import ServiceEntry

    services = {"users": ServiceEntry("users", (), ())}
    [route] = compile_traffic([_vs({})], services).routes["users"]
    assert route.policy is None
    with pytest.raises(PolicyRejected) as info:
        compile_traffic([_vs({"retries": {"attempts": 2, "retryOn": "5xx"}})], services)
    assert info.value.path == "policies[0].spec.http[0].retries.retryOn"
    with pytest.raises(PolicyRejected) as info:
        compile_traffic([_vs({"timeout": "soon"})], services)
    assert info.value.path == "policies[0].spec.http[0].timeout"
    with pytest.raises(PolicyRejected) as info:
        compile_traffic([_vs({"mirror": {"host": "users", "subset": "v9"}})], services)
    assert info.value.path == "policies[0].spec.http[0].mirror.subset"
