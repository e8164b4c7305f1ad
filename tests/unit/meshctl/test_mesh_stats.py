"""meshctl stat/top's arithmetic on the sidecar's own exposition (sidecar.metrics.CallMetrics):
counts per service version from one reporter, windows between two scrapes (and a restart
between them), and quantiles interpolated within the buckets as Prometheus' histogram_quantile."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from meshctl.cmd_top import render
from meshctl.mesh_stats import Counts, ScrapeError, parse_metrics, quantile, rows, scrape
from sidecar.metrics import CallMetrics

PEER = "spiffe://cluster.local/ns/default/sa/client"


class Sidecar:
    """A sidecar's metrics: a users instance (inbound) that also calls orders (outbound)."""

    def __init__(self, version: str = "v1") -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.calls = CallMetrics(self.registry, workload="users", version=version)

    def serve(self, status: int, millis: float, n: int = 1) -> None:
        for _ in range(n):
            self.calls.record("inbound", "users", "", PEER, status, millis, 10, 20, True)

    def call(self, version: str, status: int, millis: float, n: int = 1) -> None:
        for _ in range(n):
            self.calls.record("outbound", "orders", version, None, status, millis, 10, 20, True)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


def test_counts_per_version_from_the_chosen_reporter() -> None:
    sidecar = Sidecar()
    sidecar.serve(0, 3.0, n=8)
    sidecar.serve(5, 3.0, n=2)  # NOT_FOUND
    sidecar.call("v2", 14, 40.0, n=3)
    inbound = parse_metrics(sidecar.text(), "destination")
    assert list(inbound) == [("users", "v1")]
    assert (inbound["users", "v1"].requests, inbound["users", "v1"].successes) == (10, 8)
    assert inbound["users", "v1"].buckets[5.0] == 10  # 3 ms: in (1, 5]
    outbound = parse_metrics(sidecar.text(), "source")
    assert list(outbound) == [("orders", "v2")]
    assert (outbound["orders", "v2"].requests, outbound["orders", "v2"].successes) == (3, 0)


def test_quantile_interpolates_within_a_bucket() -> None:
    # 100 calls: 50 in (0, 1], 40 in (1, 5], 10 in (5, 10]
    buckets = {1.0: 50, 5.0: 90, 10.0: 100, float("inf"): 100}
    assert quantile(0.5, buckets) == pytest.approx(1.0)
    assert quantile(0.25, buckets) == pytest.approx(0.5)
    assert quantile(0.7, buckets) == pytest.approx(3.0)
    assert quantile(0.99, buckets) == pytest.approx(9.5)
    assert quantile(0.5, {1.0: 0, float("inf"): 0}) is None
    # past the last finite bound: that bound (as histogram_quantile)
    assert quantile(0.99, {1.0: 1, 10.0: 1, float("inf"): 10}) == 10.0


def test_a_window_is_the_difference_of_two_scrapes_summed_over_sidecars() -> None:
    a, b, v2 = Sidecar(), Sidecar(), Sidecar("v2")
    a.serve(0, 0.7, n=5)
    first = {"a": parse_metrics(a.text(), "destination"), "b": parse_metrics(b.text(), "destination")}
    a.serve(0, 0.7, n=6)
    a.serve(14, 0.7, n=2)
    b.serve(0, 30.0, n=2)
    v2.serve(0, 2.0, n=4)
    latest = {name: parse_metrics(s.text(), "destination") for name, s in (("a", a), ("b", b), ("v2", v2))}
    [v1_row, v2_row] = rows(latest, first, 2.0)
    assert (v1_row.service, v1_row.version, v1_row.sidecars) == ("users", "v1", 2)
    assert (v1_row.requests, v1_row.total, v1_row.rate) == (10, 15, 5.0)
    assert v1_row.success_rate == pytest.approx(0.8)
    assert v1_row.p50_ms == pytest.approx(0.5 + 0.5 * (5 - 0) / 8)  # 8 of 10 in (0.5, 1]
    assert v1_row.p99_ms == pytest.approx(25 + 25 * (9.9 - 8) / 2)  # the 2 slow ones in (25, 50]
    # a sidecar first seen in the window: all of its calls are the window's
    assert (v2_row.version, v2_row.requests, v2_row.rate, v2_row.success_rate) == ("v2", 4, 2.0, 1.0)


def test_a_restarted_sidecar_counts_from_zero() -> None:
    before, after = Counts(requests=100, successes=100, buckets={1.0: 100}), Counts(3, 2, {1.0: 3})
    assert after.minus(before) is after
    assert Counts(105, 104, {1.0: 105}).minus(before) == Counts(5, 4, {1.0: 5})


def test_without_a_window_everything_since_start_and_no_rate() -> None:
    sidecar = Sidecar()
    sidecar.serve(0, 3.0, n=3)
    [row] = rows({"a": parse_metrics(sidecar.text(), "destination")})
    assert (row.requests, row.total, row.rate, row.success_rate) == (3, 3, None, 1.0)
    table = render([row]).splitlines()
    assert table[0].split() == [
        "SERVICE",
        "VERSION",
        "SIDECARS",
        "REQUESTS",
        "RPS",
        "SUCCESS",
        "P50",
        "P99",
        "TOTAL",
    ]
    assert table[1].split() == ["users", "v1", "1", "3", "-", "100.00%", "3.00ms", "4.96ms", "3"]
    assert render([]) == "no calls reported"


def test_scrape_keeps_the_readable_sidecars_and_names_the_others() -> None:
    sidecar = Sidecar()
    sidecar.serve(0, 1.0)
    texts = {"good": sidecar.text(), "garbage": "istio_requests_total{ nope"}

    def fetch(address: str) -> str:
        if address == "down":
            raise ScrapeError("down: connection refused")
        return texts[address]

    result, errors = scrape(["good", "down", "garbage"], "destination", fetch)
    assert list(result) == ["good"]
    assert errors[0] == "down: connection refused"
    assert errors[1].startswith("garbage: unreadable metrics")
