"""The resilience state of each destination cluster, kept across config snapshots.

A snapshot swap rebuilds the pickers, but an endpoint's ejection, a breaker's state and the
calls in flight must carry on: `ClusterStates` keeps one `ClusterState` per (service, subset)
that has a DestinationRule `connectionPool`, `outlierDetection`, `circuitBreaker` or `healthCheck`, and
`sync(traffic)` brings them to each new snapshot (endpoints added or gone, settings changed).
`run()` is the interval timer of the outlier detectors; the health checks run as tasks of their
own (sidecar/health_check.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sidecar.circuit import NO_LIMITS, BreakerConfig, CircuitBreaker, ConnectionLimits, check_limits
from sidecar.config import Address
from sidecar.errors import Overflow
from sidecar.health_check import CheckKey, HealthCheckConfig, HealthCheckers
from sidecar.outlier import OutlierConfig, OutlierDetector
from sidecar.pool import UpstreamPool

log = logging.getLogger(__name__)

ClusterKey = tuple[str, str | None]


@dataclass(frozen=True, slots=True)
class Resilience:
    """A cluster's DestinationRule settings beyond load balancing (a subset's trafficPolicy
    block replacing the rule's block of the same name)."""

    limits: ConnectionLimits = NO_LIMITS
    outlier: OutlierConfig | None = None
    breaker: BreakerConfig | None = None
    health_check: HealthCheckConfig | None = None

    @property
    def empty(self) -> bool:
        return (
            self.limits == NO_LIMITS
            and self.outlier is None
            and self.breaker is None
            and self.health_check is None
        )


NO_RESILIENCE = Resilience()


def _cluster_name(key: ClusterKey) -> str:
    service, subset = key
    return service if subset is None else f"{service}/{subset}"


class ClusterState:
    """One cluster's outlier detector, breaker, admission limits and health checks."""

    def __init__(
        self,
        key: ClusterKey,
        *,
        clock: Callable[[], float],
        rand: random.Random,
        checkers: HealthCheckers | None = None,
    ) -> None:
        self.key = key
        self.service = key[0]
        self._clock = clock
        self._rand = rand
        self._checkers = checkers
        self.checks: tuple[CheckKey, ...] = ()  # this cluster's endpoints' health checks
        self.policy = NO_RESILIENCE
        self.outlier: OutlierDetector | None = None
        self.breaker: CircuitBreaker | None = None
        self.overflows: dict[str, int] = {"requests": 0, "pending": 0, "retries": 0}
        self.retries_active = 0  # calls retrying now (connectionPool.http.maxRetries bounds it)
        self.ejections = 0

    def configure(self, policy: Resilience, endpoints: Sequence[Address]) -> None:
        self.policy = policy
        addresses = [str(a) for a in endpoints]
        check = policy.health_check
        self.checks = () if check is None else tuple((a, self.service, check) for a in endpoints)
        if policy.outlier is None:
            self.outlier = None
        elif self.outlier is None:
            self.outlier = OutlierDetector(
                policy.outlier, addresses, clock=self._clock, rand=self._rand, on_eject=self._ejected
            )
        else:
            self.outlier.update(policy.outlier, addresses)
        if policy.breaker is None:
            self.breaker = None
        elif self.breaker is None:
            self.breaker = CircuitBreaker(policy.breaker, self._clock)
        else:
            self.breaker.config = policy.breaker

    def _ejected(self, address: str, reason: str) -> None:
        self.ejections += 1
        log.warning("outlier detection ejected %s from %s: %s", address, _cluster_name(self.key), reason)

    # ------------------------------------------------------------------ per call

    @property
    def version(self) -> int:
        """Changes whenever the set of endpoints that may take calls does."""
        version = 0 if self.outlier is None else self.outlier.version
        if self.checks and self._checkers is not None:
            version += self._checkers.version
        return version

    def ejected(self) -> frozenset[str]:
        return frozenset() if self.outlier is None else self.outlier.ejected()

    def unhealthy(self) -> frozenset[str]:
        checkers = self._checkers
        if checkers is None:
            return frozenset()
        return frozenset(str(key[0]) for key in self.checks if checkers.unhealthy(key))

    def unavailable(self) -> frozenset[str]:
        """Addresses that must get no new calls: ejected or failing their health checks."""
        return self.ejected() | self.unhealthy()

    def admit(self, pools: Sequence[UpstreamPool]) -> None:
        """Raise CircuitOpen or Overflow when the call must fail fast."""
        if self.breaker is not None:
            self.breaker.admit(self.service)
        limits = self.policy.limits
        if limits.max_requests or limits.max_pending:
            try:
                check_limits(limits, pools, self.service)
            except Overflow as exc:
                self.overflows[exc.kind] += 1
                raise

    def may_retry(self) -> bool:
        """False (counted as an overflow) when connectionPool.http.maxRetries calls are retrying."""
        limit = self.policy.limits.max_retries
        if limit and self.retries_active >= limit:
            self.overflows["retries"] += 1
            return False
        return True

    def reporter(self, address: str) -> Callable[[int], None] | None:
        """What a Target of `address` in this cluster calls with each attempt's status."""
        outlier = None if self.outlier is None else self.outlier.reporter(address)
        breaker = None if self.breaker is None else self.breaker.record
        if outlier is not None and breaker is not None:

            def both(status: int) -> None:
                outlier(status)
                breaker(status)

            return both
        return outlier or breaker

    # ------------------------------------------------------------------ introspection

    def as_json(self) -> dict[str, object]:
        now = self._clock()
        out: dict[str, object] = {
            "service": self.key[0],
            "subset": self.key[1],
            "overflows": dict(self.overflows),
            "ejections": self.ejections,
        }
        if self.breaker is not None:
            out["circuit"] = self.breaker.as_json()
        endpoints: dict[str, dict[str, object]] = {}
        if self.outlier is not None:
            config = self.outlier.config
            for address, ep in self.outlier.endpoints.items():
                endpoints[address] = ep.as_json(now, config)
        checkers = self._checkers
        if checkers is not None:
            for key in self.checks:
                health = checkers.health.get(key)
                if health is not None:
                    endpoints.setdefault(str(key[0]), {})["health"] = health.as_json()
        if endpoints:
            out["endpoints"] = endpoints
        return out


class ClusterStates:
    """Every cluster's state, by (service, subset); the sidecar owns one."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: random.Random | None = None,
        checkers: HealthCheckers | None = None,
    ) -> None:
        self._clock = clock
        self._rand = rand if rand is not None else random.Random()
        self.checkers = checkers  # None: health checks are not run (tests of the rest)
        self.states: dict[ClusterKey, ClusterState] = {}
        self._wake: asyncio.Event | None = None

    def sync(self, clusters: Iterable[tuple[ClusterKey, Resilience, Sequence[Address]]]) -> None:
        """Bring the states to a new snapshot: (cluster key, its settings, its endpoints)."""
        keep: dict[ClusterKey, ClusterState] = {}
        for key, policy, endpoints in clusters:
            if policy.empty:
                continue
            state = self.states.get(key) or ClusterState(
                key, clock=self._clock, rand=self._rand, checkers=self.checkers
            )
            state.configure(policy, endpoints)
            keep[key] = state
        self.states = keep
        if self.checkers is not None:
            self.checkers.sync(check for state in keep.values() for check in state.checks)
        if self._wake is not None:
            self._wake.set()

    def get(self, key: ClusterKey) -> ClusterState | None:
        return self.states.get(key)

    def sweep_due(self) -> float | None:
        """Run the outlier sweeps that are due; the time the next one is due (None: none)."""
        now = self._clock()
        due: float | None = None
        for state in list(self.states.values()):
            detector = state.outlier
            if detector is None:
                continue
            if detector.due <= now:
                detector.sweep()
            due = detector.due if due is None else min(due, detector.due)
        return due

    async def run(self) -> None:
        """The outlier detectors' interval timer, until cancelled."""
        self._wake = wake = asyncio.Event()
        while True:
            due = self.sweep_due()
            wake.clear()
            timeout = None if due is None else max(due - self._clock(), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)

    def as_json(self) -> list[dict[str, object]]:
        return [self.states[key].as_json() for key in sorted(self.states, key=lambda k: (k[0], k[1] or ""))]
