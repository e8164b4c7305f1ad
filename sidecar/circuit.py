"""Circuit breaking per destination cluster: admission limits and a closed/open/half-open breaker.

- `ConnectionLimits` (DestinationRule `connectionPool.http`): at most `max_requests` calls in
  flight to the cluster's endpoints (`http2MaxRequests`) and at most `max_pending` of them waiting
  for a connection or a stream slot (`http1MaxPendingRequests`). Counted from the endpoints'
  upstream pools, so no call can leak a slot. Over a limit → `Overflow` (UNAVAILABLE at once).
- `CircuitBreaker` (mesh-native `circuitBreaker`): for when the whole destination fails. Closed,
  it counts consecutive failures of the cluster's calls (the outlier detector's failure codes);
  at `consecutive_failures` it opens and every call fails fast with `CircuitOpen` for
  `open_time`; then it lets `half_open_calls` probe calls through: all succeed → closed, any
  fails → open again.

Both errors are marked not retryable (`MeshError.retryable`): retrying a call refused for load
only adds load.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import methodcaller

from sidecar.errors import CircuitOpen, Overflow
from sidecar.outlier import FAILURES
from sidecar.pool import UpstreamPool


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """0 (or absent) means no limit, as in Istio."""

    max_requests: int = 0
    max_pending: int = 0
    max_retries: int = 0  # connectionPool.http.maxRetries: enforced by the retry code


NO_LIMITS = ConnectionLimits()
_IN_FLIGHT = methodcaller("in_flight")  # per call: map() over these beats a generator 2:1
_WAITING = methodcaller("waiting")


def check_limits(limits: ConnectionLimits, pools: Sequence[UpstreamPool], service: str) -> None:
    """Raise Overflow when one more call to the cluster whose endpoints' pools are `pools` would
    go over `limits`."""
    if limits.max_requests:
        in_flight = sum(map(_IN_FLIGHT, pools))
        if in_flight >= limits.max_requests:
            raise Overflow(
                "requests",
                f"too many calls to '{service}' in flight ({in_flight}; "
                f"connectionPool.http.http2MaxRequests is {limits.max_requests})",
            )
    if limits.max_pending:
        pending = sum(map(_WAITING, pools))
        if pending >= limits.max_pending:
            raise Overflow(
                "pending",
                f"too many calls to '{service}' waiting for a connection ({pending}; "
                f"connectionPool.http.http1MaxPendingRequests is {limits.max_pending})",
            )


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    consecutive_failures: int = 10
    open_time: float = 5.0  # seconds
    half_open_calls: int = 3


class BreakerState(enum.IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    """One cluster's breaker. `admit()` before picking an endpoint, `record(status)` for every
    attempt's outcome (the Targets' report)."""

    def __init__(self, config: BreakerConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0  # consecutive, while closed
        self.opened_at = 0.0
        self.probes = 0  # admitted while half-open
        self.successes = 0  # of the probes
        self.opens = 0  # in all, for /clusters and the metrics
        self.rejected = 0

    def admit(self, service: str) -> None:
        state = self.state
        if state is BreakerState.CLOSED:
            return
        now = self._clock()
        config = self.config
        if state is BreakerState.OPEN:
            if now < self.opened_at + config.open_time:
                self.rejected += 1
                raise CircuitOpen(f"circuit open for '{service}': its calls keep failing")
            self.state = BreakerState.HALF_OPEN
            self.probes = self.successes = 0
            self.opened_at = now
        elif self.probes >= config.half_open_calls and now >= self.opened_at + config.open_time:
            # Probes that never reported (cut before the relay saw a status): try a new round.
            self.probes = self.successes = 0
            self.opened_at = now
        if self.probes >= config.half_open_calls:
            self.rejected += 1
            raise CircuitOpen(
                f"circuit half-open for '{service}': {config.half_open_calls} probe calls are out"
            )
        self.probes += 1

    def record(self, status: int) -> None:
        state = self.state
        failed = status in FAILURES
        if state is BreakerState.CLOSED:
            if not failed:
                self.failures = 0
                return
            self.failures += 1
            if self.failures >= self.config.consecutive_failures:
                self._open()
        elif state is BreakerState.HALF_OPEN:
            if failed:
                self._open()
                return
            self.successes += 1
            if self.successes >= self.config.half_open_calls:
                self.state = BreakerState.CLOSED
                self.failures = 0
        # OPEN: outcomes of calls admitted before it opened change nothing

    def _open(self) -> None:
        self.state = BreakerState.OPEN
        self.opened_at = self._clock()
        self.failures = 0
        self.opens += 1

    def as_json(self) -> dict[str, object]:
        return {"state": self.state.name.lower(), "opens": self.opens, "rejected": self.rejected}
