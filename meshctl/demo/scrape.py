"""What the demo's view shows, computed from the sidecars' Prometheus `/metrics`: per destination
service and version, the calls the calling sidecars reported (`reporter="source"`), how many
succeeded, their latency histogram; and the mesh's own counters (`grpc_mesh_*`).

A `Sample` is one scrape of every calling sidecar, summed; `rows(older, newer)` turns two samples
into req/s, success rate, p50/p99 (interpolated within Istio's histogram buckets, as Prometheus'
`histogram_quantile` does) and each version's share of its service's calls.
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

SCRAPE_TIMEOUT = 2.0
REQUESTS = "istio_requests_total"
DURATION = "istio_request_duration_milliseconds"
OK = "0"

Key = tuple[str, str]  # (destination service, destination version)


@dataclass
class Series:
    """One (service, version): calls, calls that ended OK, and the duration histogram (cumulative
    counts per upper bound, as exposed)."""

    calls: float = 0.0
    ok: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)


@dataclass
class Sample:
    time: float
    series: dict[Key, Series] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)  # "grpc_mesh_x{direction}" → value
    errors: list[str] = field(default_factory=list)  # sidecars that could not be scraped


@dataclass(frozen=True)
class Row:
    service: str
    version: str
    calls: int
    rate: float  # calls per second
    success: float  # 0..1 (1.0 when there were no calls)
    p50: float  # ms
    p99: float  # ms
    share: float  # of the service's calls, 0..1


def parse(text: str, into: Sample) -> None:
    """Add one sidecar's exposition to `into`."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if family.name == "istio_requests" and s.name == REQUESTS:
                if labels.get("reporter") != "source":
                    continue
                series = into.series.setdefault(_key(labels), Series())
                series.calls += s.value
                if labels.get("grpc_response_status") == OK:
                    series.ok += s.value
            elif family.name == DURATION and s.name == DURATION + "_bucket":
                if labels.get("reporter") != "source":
                    continue
                series = into.series.setdefault(_key(labels), Series())
                bound = float(labels["le"])
                series.buckets[bound] = series.buckets.get(bound, 0.0) + s.value
            elif (
                family.type == "counter"
                and family.name.startswith("grpc_mesh_")
                and s.name.endswith("_total")
            ):
                direction = labels.get("direction", "")
                name = s.name.removesuffix("_total") + (f"{{{direction}}}" if direction else "")
                into.counters[name] = into.counters.get(name, 0.0) + s.value


def _key(labels: Mapping[str, str]) -> Key:
    return labels.get("destination_service", "unknown"), labels.get("destination_version", "unknown")


def scrape(admins: Iterable[str], now: float) -> Sample:
    """One sample over the sidecars at `admins` (host:port of their admin listeners)."""
    sample = Sample(now)
    for admin in admins:
        try:
            with urllib.request.urlopen(f"http://{admin}/metrics", timeout=SCRAPE_TIMEOUT) as reply:
                parse(reply.read().decode("utf-8", "replace"), sample)
        except (OSError, ValueError) as exc:
            sample.errors.append(f"{admin}: {exc}")
    return sample


def quantile(q: float, buckets: Mapping[float, float]) -> float:
    """The q-quantile (0..1) of a cumulative histogram {upper bound: count}, interpolated linearly
    within its bucket; 0.0 when empty. Past the last finite bound: that bound."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return 0.0
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = bound, count
    return lower


def rows(older: Sample, newer: Sample) -> list[Row]:
    """Per (service, version), what happened between the two samples; services and versions with
    no calls in between are left out."""
    span = max(newer.time - older.time, 1e-9)
    deltas: dict[Key, Series] = {}
    for key, new in newer.series.items():
        old = older.series.get(key, Series())
        calls = new.calls - old.calls
        if calls <= 0:
            continue
        buckets = {b: n - old.buckets.get(b, 0.0) for b, n in new.buckets.items()}
        deltas[key] = Series(calls, new.ok - old.ok, buckets)
    per_service: dict[str, float] = {}
    for (service, _), d in deltas.items():
        per_service[service] = per_service.get(service, 0.0) + d.calls
    out = []
    for (service, version), d in sorted(deltas.items()):
        out.append(
            Row(
                service,
                version,
                round(d.calls),
                d.calls / span,
                d.ok / d.calls,
                quantile(0.5, d.buckets),
                quantile(0.99, d.buckets),
                d.calls / per_service[service],
            )
        )
    return out


def counter_deltas(older: Sample, newer: Sample, words: Iterable[str]) -> dict[str, float]:
    """The mesh counters whose name contains one of `words` and that moved between the samples."""
    found = {}
    for name, value in sorted(newer.counters.items()):
        moved = value - older.counters.get(name, 0.0)
        if moved > 0 and any(word in name for word in words):
            found[name] = moved
    return found


def share(rows_: Iterable[Row], service: str, version: str) -> tuple[float, int]:
    """(the version's share of the service's calls, the service's calls) among `rows_`."""
    calls = {r.version: r.calls for r in rows_ if r.service == service}
    total = sum(calls.values())
    return (calls.get(version, 0) / total if total else 0.0), total


def success(rows_: Iterable[Row], service: str) -> tuple[float, int]:
    """(the service's success rate over all versions, its calls)."""
    selected = [r for r in rows_ if r.service == service]
    total = sum(r.calls for r in selected)
    ok = sum(r.success * r.calls for r in selected)
    return (ok / total if total else 1.0), total
