"""Outlier detection (sidecar/outlier.py) on a fake clock: consecutive gRPC failures, gRFC A50's
success-rate and failure-percentage sweeps, the ejection cap, and ejection time growing and
decaying."""

from __future__ import annotations

import random

import pytest

from sidecar.grpc_wire import Code
from sidecar.outlier import (
    FailurePercentageEjection,
    OutlierConfig,
    OutlierDetector,
    SuccessRateEjection,
)
from tests.support.meshctl_runner import FakeClock

OK = Code.OK


def addresses(n: int) -> list[str]:
    return [f"10.0.0.{i}:15006" for i in range(1, n + 1)]


def detector(config: OutlierConfig, n: int, clock: FakeClock | None = None) -> OutlierDetector:
    return OutlierDetector(config, addresses(n), clock=clock or FakeClock(), rand=random.Random(1))


def feed(d: OutlierDetector, address: str, ok: int, failed: int, code: int = Code.UNAVAILABLE) -> None:
    report = d.reporter(address)
    for _ in range(ok):
        report(OK)
    for _ in range(failed):
        report(code)


def test_success_rates_50_100_100_100_100_eject_only_the_first() -> None:
    # mean 0.9, population stdev 0.2: the threshold is 0.9 - 1.9 * 0.2 = 52%
    config = OutlierConfig(consecutive_errors=0, max_ejection_percent=100, success_rate=SuccessRateEjection())
    d = detector(config, 5)
    hosts = addresses(5)
    feed(d, hosts[0], 50, 50)
    for host in hosts[1:]:
        feed(d, host, 100, 0)
    d.sweep()
    assert d.ejected() == {hosts[0]}


def test_success_rates_spread_within_the_stdev_factor_eject_none() -> None:
    config = OutlierConfig(consecutive_errors=0, max_ejection_percent=100, success_rate=SuccessRateEjection())
    d = detector(config, 5)
    # mean 94%, stdev 2.83%: the threshold is 88.6%, under every one of them
    for host, ok in zip(addresses(5), (90, 92, 94, 96, 98), strict=True):
        feed(d, host, ok, 100 - ok)
    d.sweep()
    assert d.ejected() == frozenset()


def test_failure_percentage_threshold_85_ejects_90_and_keeps_80() -> None:
    config = OutlierConfig(
        consecutive_errors=0, max_ejection_percent=100, failure_percentage=FailurePercentageEjection()
    )
    d = detector(config, 5)
    hosts = addresses(5)
    feed(d, hosts[0], 10, 90)
    feed(d, hosts[1], 20, 80)
    feed(d, hosts[2], 15, 85)  # exactly the threshold: A50 ejects above it only
    for host in hosts[3:]:
        feed(d, host, 100, 0)
    d.sweep()
    assert d.ejected() == {hosts[0]}


@pytest.mark.parametrize(
    "config",
    [
        OutlierConfig(consecutive_errors=0, max_ejection_percent=100, success_rate=SuccessRateEjection()),
        OutlierConfig(
            consecutive_errors=0, max_ejection_percent=100, failure_percentage=FailurePercentageEjection()
        ),
    ],
)
def test_fewer_hosts_than_minimum_hosts_eject_none(config: OutlierConfig) -> None:
    d = detector(config, 4)  # minimumHosts 5
    hosts = addresses(4)
    feed(d, hosts[0], 0, 100)
    for host in hosts[1:]:
        feed(d, host, 100, 0)
    d.sweep()
    assert d.ejected() == frozenset()


def test_success_rate_counts_only_hosts_with_the_request_volume() -> None:
    config = OutlierConfig(consecutive_errors=0, max_ejection_percent=100, success_rate=SuccessRateEjection())
    d = detector(config, 5)
    hosts = addresses(5)
    feed(d, hosts[0], 0, 100)
    for host in hosts[1:4]:
        feed(d, host, 100, 0)
    feed(d, hosts[4], 99, 0)  # under requestVolume 100: only 4 hosts qualify, minimumHosts is 5
    d.sweep()
    assert d.ejected() == frozenset()


@pytest.mark.parametrize(
    ("algorithm", "hosts", "bad", "percent"),
    [
        ("failure_percentage", 10, 5, 10),
        ("consecutive", 10, 5, 10),
        # Half the hosts failing is no statistical outlier (mean 50%, stdev 50%): success rate
        # needs the bad ones to be few; 2 of 20 with a 5% cap.
        ("success_rate", 20, 2, 5),
    ],
)
def test_max_ejection_percent_caps_each_algorithm_at_exactly_one(
    algorithm: str, hosts: int, bad: int, percent: int
) -> None:
    config = OutlierConfig(
        consecutive_errors=5 if algorithm == "consecutive" else 0,
        max_ejection_percent=percent,
        success_rate=SuccessRateEjection() if algorithm == "success_rate" else None,
        failure_percentage=FailurePercentageEjection() if algorithm == "failure_percentage" else None,
    )
    d = detector(config, hosts)
    names = addresses(hosts)
    for host in names[:bad]:
        feed(d, host, 0, 100)
    for host in names[bad:]:
        feed(d, host, 100, 0)
    d.sweep()
    assert len(d.ejected()) == 1
    assert d.ejected() <= set(names[:bad])


def test_max_ejection_percent_is_never_exceeded_but_one_can_always_go() -> None:
    config = OutlierConfig(consecutive_errors=1, max_ejection_percent=50)
    d = detector(config, 5)
    for host in addresses(5):
        feed(d, host, 0, 1)
    assert len(d.ejected()) == 2  # 3 of 5 would be 60%
    tiny = detector(OutlierConfig(consecutive_errors=1, max_ejection_percent=10), 3)
    for host in addresses(3):
        feed(tiny, host, 0, 1)
    assert len(tiny.ejected()) == 1  # 10% of 3 hosts rounds to none; A50 still ejects one


def test_only_endpoint_health_codes_count_as_consecutive_failures() -> None:
    d = detector(OutlierConfig(consecutive_errors=3, max_ejection_percent=100), 2)
    a, b = addresses(2)
    for code in (Code.NOT_FOUND, Code.INVALID_ARGUMENT, Code.PERMISSION_DENIED, Code.CANCELLED) * 5:
        d.reporter(a)(code)
    assert d.ejected() == frozenset()
    feed(d, a, 0, 2, Code.INTERNAL)
    d.reporter(a)(OK)  # a success resets the run
    feed(d, a, 0, 2, Code.UNKNOWN)
    assert d.ejected() == frozenset()
    d.reporter(a)(Code.DEADLINE_EXCEEDED)
    assert d.ejected() == {a}  # at once, not at the next sweep
    feed(d, b, 0, 3, Code.NOT_FOUND)
    assert d.ejected() == {a}


def test_consecutive_gateway_errors_count_unavailable_and_deadline_only() -> None:
    config = OutlierConfig(consecutive_errors=0, consecutive_gateway_errors=2, max_ejection_percent=100)
    d = detector(config, 2)
    a = addresses(2)[0]
    feed(d, a, 0, 1, Code.UNAVAILABLE)
    feed(d, a, 0, 1, Code.INTERNAL)  # breaks the gateway run
    feed(d, a, 0, 1, Code.DEADLINE_EXCEEDED)
    assert d.ejected() == frozenset()
    feed(d, a, 0, 1, Code.UNAVAILABLE)
    assert d.ejected() == {a}


def test_ejection_time_grows_with_each_ejection_is_capped_and_decays() -> None:
    clock = FakeClock()
    config = OutlierConfig(
        consecutive_errors=1,
        interval=10.0,
        base_ejection_time=30.0,
        max_ejection_time=70.0,
        max_ejection_percent=100,
    )
    d = detector(config, 2, clock)
    a = addresses(2)[0]

    def eject_and_time() -> float:
        """Eject `a` now; sweep every interval until it is back; the seconds it was out."""
        start = clock.now
        feed(d, a, 0, 1)
        assert a in d.ejected()
        while a in d.ejected():
            clock.now += config.interval
            d.sweep()
        return clock.now - start

    assert eject_and_time() == 30.0  # multiplier 1
    assert eject_and_time() == 60.0  # 2: back-to-back ejections grow
    assert eject_and_time() == 70.0  # 3 → 90 s, capped at maxEjectionTime
    assert d.endpoints[a].multiplier == 3
    for _ in range(2):  # healthy sweeps take the multiplier down one at a time
        clock.now += config.interval
        d.sweep()
    assert d.endpoints[a].multiplier == 1
    assert eject_and_time() == 60.0  # 2 again, not 4
    for _ in range(5):
        clock.now += config.interval
        d.sweep()
    assert d.endpoints[a].multiplier == 0
    assert eject_and_time() == 30.0


def test_enforcement_percentage_zero_detects_but_never_ejects() -> None:
    config = OutlierConfig(
        consecutive_errors=0,
        max_ejection_percent=100,
        failure_percentage=FailurePercentageEjection(enforcement_percentage=0),
    )
    d = detector(config, 5)
    feed(d, addresses(5)[0], 0, 100)
    d.sweep()
    assert d.ejected() == frozenset()


def test_sweeps_judge_only_the_last_interval() -> None:
    config = OutlierConfig(
        consecutive_errors=0, max_ejection_percent=100, failure_percentage=FailurePercentageEjection()
    )
    d = detector(config, 5)
    a = addresses(5)[0]
    feed(d, a, 0, 100)
    d.sweep()
    assert d.ejected() == {a}
    b = addresses(5)[1]
    feed(d, b, 0, 30)
    d.sweep()
    feed(d, b, 0, 30)  # 60 failures over two intervals, under requestVolume 50 in each
    d.sweep()
    assert b not in d.ejected()


def test_update_keeps_state_of_remaining_endpoints_and_forgets_others() -> None:
    clock = FakeClock()
    config = OutlierConfig(consecutive_errors=1, max_ejection_percent=100)
    d = detector(config, 3, clock)
    a, b, c = addresses(3)
    feed(d, a, 0, 1)
    feed(d, c, 0, 1)
    version = d.version
    d.update(config, [a, b, "10.0.0.9:15006"])
    assert d.ejected() == {a}
    assert d.version > version  # an ejected endpoint left: pickers must look again
    d.update(OutlierConfig(consecutive_errors=1, interval=2.0, max_ejection_percent=100), [a, b])
    assert d.due == clock.now + 2.0  # the next sweep moves with a shorter interval
