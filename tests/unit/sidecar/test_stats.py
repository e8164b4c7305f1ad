"""Sidecar call stats: counts, errors, per-status counts, latency buckets and the /stats JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.grpc_wire import Code
from sidecar.stats import BUCKETS_MS, CallStats, Stats


def test_buckets_are_increasing_and_end_with_an_overflow_bucket() -> None:
    assert list(BUCKETS_MS) == sorted(set(BUCKETS_MS))
    assert BUCKETS_MS[-1] == float("inf")


def test_new_call_stats_are_empty() -> None:
    s = CallStats()
    assert (s.total, s.errors, s.by_status) == (0, 0, {})
    assert s.buckets == [0] * len(BUCKETS_MS)
    assert s.quantile(0.5) == 0.0
    assert s.quantile(0.99) == 0.0


def test_record_counts_totals_errors_and_statuses() -> None:
    s = CallStats()
    for status in (Code.OK, Code.OK, Code.OK, Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.UNAVAILABLE):
        s.record(status, 1.0)

    assert s.total == 6
    assert s.errors == 3  # every non-OK status is an error
    assert s.by_status == {0: 3, 14: 2, 4: 1}
    assert sum(s.buckets) == 6


@pytest.mark.parametrize(
    "millis, bound",
    [
        (0.0, 0.25),
        (0.1, 0.25),
        (0.25, 0.25),  # bounds are inclusive upper bounds
        (0.2500001, 0.5),
        (0.9, 1),
        (1.0, 1),
        (1.5, 2),
        (7.5, 7.5),
        (8.0, 10),
        (99.9, 100),
        (100.0, 100),
        (100.1, 250),
        (10_000.0, 10_000),
        (10_000.5, float("inf")),
        (3_600_000.0, float("inf")),
    ],
)
def test_latency_lands_in_the_right_bucket(millis: float, bound: float) -> None:
    s = CallStats()
    s.record(0, millis)

    expected = [0] * len(BUCKETS_MS)
    expected[BUCKETS_MS.index(bound)] = 1
    assert s.buckets == expected
    # Past the last finite bound the quantile is unknown (None), which keeps /stats strict JSON.
    reported = None if bound == float("inf") else bound
    assert s.quantile(0.5) == reported
    assert s.quantile(0.99) == reported


def test_quantiles_are_bucket_upper_bounds() -> None:
    s = CallStats()
    for _ in range(98):
        s.record(0, 0.8)
    s.record(0, 400.0)
    s.record(14, 420.0)

    assert s.quantile(0.5) == 1
    assert s.quantile(0.98) == 1
    assert s.quantile(0.99) == 500
    assert s.quantile(1.0) == 500


def test_median_of_two_buckets() -> None:
    s = CallStats()
    s.record(0, 2.0)
    s.record(0, 40.0)
    s.record(0, 40.0)

    assert s.quantile(0.5) == 50
    assert s.quantile(0.99) == 50


def test_stats_keep_one_entry_per_direction_and_service() -> None:
    stats = Stats()
    stats.record("outbound", "users", 0, 1.0)
    stats.record("outbound", "users", 14, 2.0)
    stats.record("outbound", "orders", 0, 3.0)
    stats.record("inbound", "users", 0, 4.0)

    assert set(stats.calls) == {("outbound", "users"), ("outbound", "orders"), ("inbound", "users")}
    assert stats.calls["outbound", "users"].total == 2
    assert stats.calls["outbound", "users"].errors == 1
    assert stats.calls["inbound", "users"].total == 1


def test_counters() -> None:
    stats = Stats()
    stats.incr("resets")
    stats.incr("resets")
    stats.incr("no_route", 5)

    assert stats.counters == {"resets": 2, "no_route": 5}


def test_as_json_shape() -> None:
    stats = Stats()
    stats.record("outbound", "users", 0, 0.8)
    stats.record("outbound", "users", 0, 0.9)
    stats.record("outbound", "users", 14, 30.0)
    stats.record("inbound", "orders", 0, 4.0)
    stats.incr("streams_refused", 2)
    stats.incr("accepted")

    assert stats.as_json() == {
        "calls": {
            "inbound": {
                "orders": {
                    "total": 1,
                    "errors": 0,
                    "by_status": {"0": 1},
                    "latency_ms": {"p50": 5, "p99": 5},
                },
            },
            "outbound": {
                "users": {
                    "total": 3,
                    "errors": 1,
                    "by_status": {"0": 2, "14": 1},
                    "latency_ms": {"p50": 1, "p99": 50},
                },
            },
        },
        "counters": {"accepted": 1, "streams_refused": 2},
    }


def test_as_json_is_sorted_for_stable_output() -> None:
    stats = Stats()
    stats.record("outbound", "users", 14, 1.0)
    stats.record("outbound", "orders", 0, 1.0)
    stats.record("outbound", "orders", 4, 1.0)
    stats.incr("zeta")
    stats.incr("alpha")
    out: dict[str, Any] = stats.as_json()

    calls = out["calls"]
    assert list(calls["outbound"]) == ["orders", "users"]
    assert list(calls["outbound"]["orders"]["by_status"]) == ["0", "4"]
    assert list(out["counters"]) == ["alpha", "zeta"]


def test_empty_stats_as_json() -> None:
    assert Stats().as_json() == {"calls": {}, "counters": {}}


def test_as_json_is_strict_json_even_for_calls_in_the_overflow_bucket() -> None:
    # /stats is served as JSON; a long call (a stream open for a minute) must not put a
    # non-JSON value (Infinity) in it.
    stats = Stats()
    stats.record("outbound", "users", 0, 60_000.0)

    text = json.dumps(stats.as_json(), allow_nan=False)

    assert json.loads(text)["calls"]["outbound"]["users"]["total"] == 1
