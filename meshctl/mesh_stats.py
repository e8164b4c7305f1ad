"""Golden signals per service and version, read from the sidecars' Prometheus `/metrics` (what
`meshctl stat` and `meshctl top` show): request rate, success rate and p50/p99 latency.

A scrape keeps, per sidecar, the `istio_requests_total` counts and the buckets of
`istio_request_duration_milliseconds` for one reporter, summed per (destination_service,
destination_version, success). Two scrapes make a window: counts are differences (a sidecar whose
counters went down restarted, and its new counts are the window's), rates are those over the
time between the scrapes. Quantiles interpolate within the histogram's buckets as Prometheus'
`histogram_quantile` does. A call succeeded when its `grpc_response_status` is 0 (OK).
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

REQUESTS = "istio_requests_total"
DURATION = "istio_request_duration_milliseconds"
REPORTERS = ("destination", "source")

Group = tuple[str, str]  # (destination_service, destination_version)


@dataclass(slots=True)
class Counts:
    """One group's calls as counted by one sidecar (or summed over several)."""

    requests: float = 0.0
    successes: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound (ms) → cumulative count

    def add(self, other: Counts) -> None:
        self.requests += other.requests
        self.successes += other.successes
        for bound, count in other.buckets.items():
            self.buckets[bound] = self.buckets.get(bound, 0.0) + count

    def minus(self, earlier: Counts | None) -> Counts:
        """The calls since `earlier`; all of them if the counters went down (a restart)."""
        if earlier is None or self.requests < earlier.requests:
            return self
        return Counts(
            self.requests - earlier.requests,
            self.successes - earlier.successes,
            {b: c - earlier.buckets.get(b, 0.0) for b, c in self.buckets.items()},
        )


def parse_metrics(text: str, reporter: str) -> dict[Group, Counts]:
    """One sidecar's exposition → its counts per group, for the calls `reporter` reported."""
    out: dict[Group, Counts] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (REQUESTS.removesuffix("_total"), DURATION):
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels.get("reporter") != reporter:
                continue
            group = (
                labels.get("destination_service", "unknown"),
                labels.get("destination_version", "unknown"),
            )
            counts = out.get(group)
            if counts is None:
                counts = out[group] = Counts()
            if sample.name == REQUESTS:
                counts.requests += sample.value
                if labels.get("grpc_response_status") == "0":
                    counts.successes += sample.value
            elif sample.name == DURATION + "_bucket":
                bound = float(labels["le"])
                counts.buckets[bound] = counts.buckets.get(bound, 0.0) + sample.value
    return out


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile from cumulative bucket counts, interpolated linearly within its bucket;
    None without observations. In the +Inf bucket: the highest finite bound."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank and count > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


@dataclass(frozen=True, slots=True)
class Row:
    """One service version's signals over a window (rate None: a single scrape, no window)."""

    service: str
    version: str
    sidecars: int  # sidecars that reported calls for it
    requests: float  # in the window (or since the sidecars started, without one)
    total: float  # since the sidecars started
    rate: float | None  # requests per second
    success_rate: float | None  # 0..1; None without requests
    p50_ms: float | None
    p99_ms: float | None

    def to_json(self) -> dict[str, object]:
        return {
            "service": self.service,
            "version": self.version,
            "sidecars": self.sidecars,
            "requests": int(self.requests),
            "total": int(self.total),
            "rps": self.rate,
            "successRate": self.success_rate,
            "p50Ms": self.p50_ms,
            "p99Ms": self.p99_ms,
        }


Scrape = dict[str, dict[Group, Counts]]  # sidecar admin address → its counts


def rows(latest: Scrape, earlier: Scrape | None = None, seconds: float = 0.0) -> list[Row]:
    """The table: one row per service version, sorted. With `earlier` (taken `seconds` before),
    the window's rate, success and latency; without, everything since the sidecars started."""
    window: dict[Group, Counts] = {}
    totals: dict[Group, Counts] = {}
    reporters: dict[Group, int] = {}
    for sidecar, groups in latest.items():
        before = earlier.get(sidecar, {}) if earlier is not None else {}
        for group, counts in groups.items():
            totals.setdefault(group, Counts()).add(counts)
            window.setdefault(group, Counts()).add(counts.minus(before.get(group)) if earlier else counts)
            reporters[group] = reporters.get(group, 0) + 1
    out = []
    for group in sorted(window):
        counts = window[group]
        requests = counts.requests
        out.append(
            Row(
                service=group[0],
                version=group[1],
                sidecars=reporters[group],
                requests=requests,
                total=totals[group].requests,
                rate=requests / seconds if earlier is not None and seconds > 0 else None,
                success_rate=counts.successes / requests if requests else None,
                p50_ms=quantile(0.5, counts.buckets) if requests else None,
                p99_ms=quantile(0.99, counts.buckets) if requests else None,
            )
        )
    return out


class ScrapeError(Exception):
    """A sidecar's /metrics could not be read."""


def fetch_metrics(address: str, timeout: float = 5.0) -> str:
    """GET http://ADDRESS/metrics."""
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as response:
            body: bytes = response.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ScrapeError(f"{address}: {reason}") from None
    return body.decode("utf-8", "replace")


def scrape(
    addresses: Sequence[str],
    reporter: str,
    fetch: Callable[[str], str] = fetch_metrics,
) -> tuple[Scrape, list[str]]:
    """Every sidecar's counts (in parallel), and the errors of those that could not be read."""
    result: Scrape = {}
    errors: list[str] = []

    def one(address: str) -> tuple[str, dict[Group, Counts] | None, str]:
        try:
            return address, parse_metrics(fetch(address), reporter), ""
        except ScrapeError as exc:
            return address, None, str(exc)
        except ValueError as exc:  # not the Prometheus text format
            return address, None, f"{address}: unreadable metrics: {exc}"

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(addresses)))) as pool:
        outcomes: Iterable[tuple[str, dict[Group, Counts] | None, str]] = pool.map(one, addresses)
        for address, counts, error in outcomes:
            if counts is None:
                errors.append(error)
            else:
                result[address] = counts
    return result, errors
