"""What the demo's view shows, computed from the calling sidecars' Prometheus `/metrics`: per
destination service and version, the calls the callers reported (`reporter="source"`) — counted,
windowed and turned into rate, success rate and p50/p99 by `meshctl.mesh_stats`, the same code as
`meshctl stat` — plus each version's share of its service's calls, and the mesh's own counters
(`grpc_mesh_*`: retries, ejections...).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from meshctl import mesh_stats

REPORTER = "source"  # the callers' view: what the load generator and orders saw


@dataclass
class Sample:
    """One read of every calling sidecar."""

    time: float
    counts: mesh_stats.Scrape = field(default_factory=dict)  # per sidecar, per (service, version)
    counters: dict[str, float] = field(default_factory=dict)  # "grpc_mesh_x{direction}" → value, summed
    errors: list[str] = field(default_factory=list)  # sidecars that could not be read


@dataclass(frozen=True)
class Row:
    service: str
    version: str
    calls: int
    rate: float  # calls per second
    success: float  # 0..1
    p50: float  # ms
    p99: float  # ms
    share: float  # of the service's calls, 0..1


def parse_counters(text: str, into: dict[str, float]) -> None:
    """Add one sidecar's `grpc_mesh_*` counters to `into`, named with their direction."""
    for family in text_string_to_metric_families(text):
        if family.type != "counter" or not family.name.startswith("grpc_mesh_"):
            continue
        for s in family.samples:
            if s.name.endswith("_total"):
                direction = s.labels.get("direction", "")
                name = s.name.removesuffix("_total") + (f"{{{direction}}}" if direction else "")
                into[name] = into.get(name, 0.0) + s.value


def read(admin: str, text: str, into: Sample) -> None:
    """Add one sidecar's exposition to `into`."""
    into.counts[admin] = mesh_stats.parse_metrics(text, REPORTER)
    parse_counters(text, into.counters)


def scrape(admins: Iterable[str], now: float) -> Sample:
    """One sample over the sidecars at `admins` (host:port of their admin listeners)."""
    sample = Sample(now)
    for admin in admins:
        try:
            read(admin, mesh_stats.fetch_metrics(admin, timeout=2.0), sample)
        except (mesh_stats.ScrapeError, ValueError) as exc:
            sample.errors.append(str(exc))
    return sample


def rows(older: Sample, newer: Sample) -> list[Row]:
    """Per (service, version), what happened between the two samples; services and versions with
    no calls in between are left out."""
    window = [
        r for r in mesh_stats.rows(newer.counts, older.counts, newer.time - older.time) if r.requests > 0
    ]
    per_service: dict[str, float] = {}
    for r in window:
        per_service[r.service] = per_service.get(r.service, 0.0) + r.requests
    return [
        Row(
            r.service,
            r.version,
            round(r.requests),
            r.rate or 0.0,
            r.success_rate if r.success_rate is not None else 1.0,
            r.p50_ms or 0.0,
            r.p99_ms or 0.0,
            r.requests / per_service[r.service],
        )
        for r in window
    ]


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
