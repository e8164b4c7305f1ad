"""Per-destination call counters and latency histograms kept by the sidecar (admin /stats)."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

# Upper bounds of the latency buckets, in milliseconds.
BUCKETS_MS: tuple[float, ...] = (
    0.25,
    0.5,
    1,
    2,
    3,
    5,
    7.5,
    10,
    15,
    25,
    50,
    75,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    float("inf"),
)


@dataclass(slots=True)
class CallStats:
    total: int = 0
    errors: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS_MS))

    def record(self, status: int, millis: float) -> None:
        self.total += 1
        if status != 0:
            self.errors += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.buckets[bisect.bisect_left(BUCKETS_MS, millis)] += 1

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the q-quantile (0 when empty, None past the last bound)."""
        if not self.total:
            return 0.0
        rank = q * self.total
        seen = 0
        for bound, count in zip(BUCKETS_MS, self.buckets, strict=True):
            seen += count
            if seen >= rank:
                return bound if bound != float("inf") else None
        return None


class Stats:
    """Counters keyed by (direction, service). Cardinality is bounded by the configured services."""

    def __init__(self) -> None:
        self.calls: dict[tuple[str, str], CallStats] = {}
        self.counters: dict[str, int] = {}
        # More of the sidecar's state, read when /stats is (e.g. "rate_limits"): name → its JSON.
        self.sections: dict[str, Callable[[], object]] = {}

    def record(self, direction: str, service: str, status: int, millis: float) -> None:
        key = (direction, service)
        stats = self.calls.get(key)
        if stats is None:
            stats = self.calls[key] = CallStats()
        stats.record(status, millis)

    def incr(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def as_json(self) -> dict[str, object]:
        out: dict[str, dict[str, object]] = {}
        for (direction, service), s in sorted(self.calls.items()):
            out.setdefault(direction, {})[service] = {
                "total": s.total,
                "errors": s.errors,
                "by_status": {str(k): v for k, v in sorted(s.by_status.items())},
                "latency_ms": {"p50": s.quantile(0.5), "p99": s.quantile(0.99)},
            }
        result: dict[str, object] = {"calls": out, "counters": dict(sorted(self.counters.items()))}
        for name, section in self.sections.items():
            result[name] = section()
        return result
