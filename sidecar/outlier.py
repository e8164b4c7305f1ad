"""Outlier detection (DestinationRule `outlierDetection`): passive health from the calls themselves.

One `OutlierDetector` per cluster keeps, per endpoint address, the outcomes of the calls sent
there (`report(address)(status)` is what a Target's `report` calls) and decides ejections:

- consecutive failures: `consecutive5xxErrors` failures in a row (UNAVAILABLE, DEADLINE_EXCEEDED,
  INTERNAL, UNKNOWN; the `consecutiveGatewayErrors` count only UNAVAILABLE and DEADLINE_EXCEEDED)
  eject the endpoint at once;
- gRFC A50's success-rate and failure-percentage algorithms, run by `sweep()` once per `interval`
  over the outcomes counted since the previous sweep.

An ejection lasts `baseEjectionTime * times ejected`, capped at max(baseEjectionTime,
maxEjectionTime); the multiplier goes down by one at each sweep the endpoint is not ejected.
`maxEjectionPercent` is never exceeded, except that one endpoint can always be ejected (A50).
The module does no I/O: the clock and the random source are injected, and whoever owns the
detector calls `sweep()` when `due` comes (sidecar/endpoint_health.py). docs/resilience.md
explains the choices where Envoy and A50 differ.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sidecar.grpc_wire import Code

# Statuses that say something about the endpoint rather than about the request: an app's
# NOT_FOUND or INVALID_ARGUMENT is a healthy endpoint answering, and CANCELLED is the caller's.
FAILURES = frozenset({Code.UNKNOWN, Code.DEADLINE_EXCEEDED, Code.INTERNAL, Code.UNAVAILABLE})
GATEWAY_FAILURES = frozenset({Code.DEADLINE_EXCEEDED, Code.UNAVAILABLE})  # Envoy's 502/503/504


@dataclass(frozen=True, slots=True)
class SuccessRateEjection:
    stdev_factor: float = 1.9  # the factor itself (A50's proto field holds it times 1000)
    enforcement_percentage: int = 100
    minimum_hosts: int = 5
    request_volume: int = 100


@dataclass(frozen=True, slots=True)
class FailurePercentageEjection:
    threshold: int = 85
    enforcement_percentage: int = 100
    minimum_hosts: int = 5
    request_volume: int = 50


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    """Istio's defaults where it has them (consecutive5xxErrors 5, interval 10 s, base ejection
    30 s, 10%), Envoy's maximum ejection time (300 s). 0 consecutive errors turns that check off."""

    consecutive_errors: int = 5
    consecutive_gateway_errors: int = 0
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 10
    success_rate: SuccessRateEjection | None = None
    failure_percentage: FailurePercentageEjection | None = None

    @property
    def ejection_cap(self) -> float:
        return max(self.base_ejection_time, self.max_ejection_time)


class EndpointOutliers:
    """One endpoint's counters and ejection state."""

    __slots__ = (
        "address",
        "consecutive",
        "consecutive_gateway",
        "ejected_at",
        "ejections",
        "failures",
        "last_failures",
        "last_successes",
        "multiplier",
        "successes",
    )

    def __init__(self, address: str) -> None:
        self.address = address
        self.successes = 0  # the active bucket (since the last sweep)
        self.failures = 0
        self.last_successes = 0  # the bucket the last sweep judged
        self.last_failures = 0
        self.consecutive = 0
        self.consecutive_gateway = 0
        self.ejected_at: float | None = None
        self.multiplier = 0
        self.ejections = 0  # in all, for /clusters and the metrics

    @property
    def ejected(self) -> bool:
        return self.ejected_at is not None

    def as_json(self, now: float, config: OutlierConfig) -> dict[str, object]:
        until = None
        if self.ejected_at is not None:
            until = round(self.ejected_at + _duration(config, self.multiplier) - now, 3)
        return {
            "ejected": self.ejected,
            "ejected_for_seconds": until,
            "ejections": self.ejections,
            "multiplier": self.multiplier,
            "successes": self.last_successes,
            "failures": self.last_failures,
        }


def _duration(config: OutlierConfig, multiplier: int) -> float:
    return min(config.base_ejection_time * multiplier, config.ejection_cap)


class OutlierDetector:
    """The outlier state of one cluster's endpoints under one config (replaceable with `update`)."""

    def __init__(
        self,
        config: OutlierConfig,
        addresses: Iterable[str],
        *,
        clock: Callable[[], float],
        rand: random.Random,
        on_eject: Callable[[str, str], None] | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._rand = rand
        self._on_eject = on_eject  # (address, reason) → None: counts and logs ejections
        self.endpoints: dict[str, EndpointOutliers] = {}
        self.version = 0  # bumped at every ejection and return: pickers rebuild their lists
        self.due = clock() + config.interval
        self.update(config, addresses)

    # ------------------------------------------------------------------ configuration

    def update(self, config: OutlierConfig, addresses: Iterable[str]) -> None:
        """A new snapshot: keep the state of endpoints still present, add new ones, forget the
        rest. A changed interval moves the next sweep (A50: from the last sweep's start)."""
        if config.interval != self.config.interval:
            self.due = max(self.due - self.config.interval + config.interval, self._clock())
        self.config = config
        wanted = list(dict.fromkeys(addresses))
        old = self.endpoints
        self.endpoints = {a: old.get(a) or EndpointOutliers(a) for a in wanted}
        if any(ep.ejected for a, ep in old.items() if a not in self.endpoints):
            self.version += 1

    def ejected(self) -> frozenset[str]:
        return frozenset(a for a, ep in self.endpoints.items() if ep.ejected)

    # ------------------------------------------------------------------ outcomes

    def reporter(self, address: str) -> Callable[[int], None]:
        """What the Target of `address` calls with each attempt's gRPC status."""

        def report(status: int) -> None:
            ep = self.endpoints.get(address)
            if ep is not None:
                self._record(ep, status)

        return report

    def _record(self, ep: EndpointOutliers, status: int) -> None:
        config = self.config
        if status not in FAILURES:
            ep.successes += 1
            ep.consecutive = ep.consecutive_gateway = 0
            return
        ep.failures += 1
        ep.consecutive += 1
        if status in GATEWAY_FAILURES:
            ep.consecutive_gateway += 1
        else:
            ep.consecutive_gateway = 0
        if ep.ejected:
            return
        if config.consecutive_errors and ep.consecutive >= config.consecutive_errors:
            self._eject(ep, self._clock(), f"{ep.consecutive} consecutive failures")
        elif (gateway := config.consecutive_gateway_errors) and ep.consecutive_gateway >= gateway:
            self._eject(ep, self._clock(), f"{ep.consecutive_gateway} consecutive gateway failures")

    # ------------------------------------------------------------------ ejection

    def _may_eject(self) -> bool:
        """One more ejection keeps the ejected share within maxEjectionPercent, or none is ejected."""
        ejected = sum(1 for ep in self.endpoints.values() if ep.ejected)
        if ejected == 0:
            return bool(self.endpoints)
        return (ejected + 1) * 100 <= self.config.max_ejection_percent * len(self.endpoints)

    def _eject(self, ep: EndpointOutliers, now: float, reason: str) -> bool:
        if not self._may_eject():
            return False
        ep.ejected_at = now
        ep.multiplier += 1
        ep.ejections += 1
        ep.consecutive = ep.consecutive_gateway = 0
        self.version += 1
        if self._on_eject is not None:
            self._on_eject(ep.address, reason)
        return True

    def _enforced(self, percentage: int) -> bool:
        return self._rand.randrange(100) < percentage

    # ------------------------------------------------------------------ the interval sweep

    def sweep(self) -> None:
        """One interval's work (A50): judge the outcomes counted since the last sweep, then return
        endpoints whose ejection time is over and decay the others' multipliers."""
        now = self._clock()
        config = self.config
        self.due = now + config.interval
        for ep in self.endpoints.values():
            ep.last_successes, ep.last_failures = ep.successes, ep.failures
            ep.successes = ep.failures = 0
        if config.success_rate is not None:
            self._success_rate(config.success_rate, now)
        if config.failure_percentage is not None:
            self._failure_percentage(config.failure_percentage, now)
        for ep in self.endpoints.values():
            if ep.ejected_at is None:
                if ep.multiplier > 0:
                    ep.multiplier -= 1
            elif now >= ep.ejected_at + _duration(config, ep.multiplier):
                ep.ejected_at = None
                self.version += 1

    def _candidates(self, volume: int) -> list[tuple[float, EndpointOutliers]]:
        """(success rate, endpoint) of the endpoints not ejected with at least `volume` outcomes
        in the last interval, worst first (so a capped sweep ejects the worst)."""
        out = []
        for ep in self.endpoints.values():
            total = ep.last_successes + ep.last_failures
            if total >= volume and not ep.ejected:
                out.append((ep.last_successes / total, ep))
        out.sort(key=lambda pair: pair[0])
        return out

    def _success_rate(self, rule: SuccessRateEjection, now: float) -> None:
        candidates = self._candidates(rule.request_volume)
        if len(candidates) < rule.minimum_hosts:
            return
        rates = [rate for rate, _ in candidates]
        mean = sum(rates) / len(rates)
        stdev = math.sqrt(sum((r - mean) ** 2 for r in rates) / len(rates))
        threshold = mean - stdev * rule.stdev_factor
        for rate, ep in candidates:
            if rate >= threshold:
                break  # worst first: the rest are above it too
            if not self._may_eject():
                return
            if self._enforced(rule.enforcement_percentage):
                self._eject(ep, now, f"success rate {rate:.0%} below {threshold:.0%}")

    def _failure_percentage(self, rule: FailurePercentageEjection, now: float) -> None:
        if len(self.endpoints) < rule.minimum_hosts:
            return
        for _, ep in self._candidates(rule.request_volume):
            failed = 100 * ep.last_failures / (ep.last_successes + ep.last_failures)
            if failed <= rule.threshold:
                break
            if not self._may_eject():
                return
            if self._enforced(rule.enforcement_percentage):
                self._eject(ep, now, f"{failed:.0f}% of calls failed (threshold {rule.threshold}%)")
