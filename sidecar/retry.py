"""Retries: a route's retry policy, gRFC A6's backoff and pushback, and the two limits on retries.

The relay (sidecar/relay.py) asks, when an attempt fails before the call is committed:

- `RetryPolicy.retryable(status)` — is the status one the route retries on;
- `pushback(value)` — did the server say when (or whether) to retry;
- `Destination.may_retry()` — do the retry budget and A6's throttle allow one more retry now;
- `backoff(policy, n, rand)` — how long to wait before retry n.

Per destination service (`Destinations`), one `Destination` counts the calls in flight, the
retries in flight (Envoy's retry budget: at most `budget_percent` of the calls in flight are
retries, never fewer than `min_retry_concurrency`), and A6's token bucket (`retryThrottling`: a
failed attempt takes a token, a success gives back `token_ratio`; no retries while the tokens are at
or below half of `max_tokens`). docs/resilience.md explains the choices.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sidecar.grpc_wire import Code

MAX_ATTEMPTS = 5  # gRFC A6's client-side cap, whatever the policy asks for
INITIAL_BACKOFF = 0.025  # seconds: Envoy's (and so Istio's) default base interval
MAX_BACKOFF = 0.25  # ten times the base, as Envoy does
BACKOFF_MULTIPLIER = 2.0
JITTER = 0.2  # each backoff is scaled by U(1 - JITTER, 1 + JITTER)

STOP = -1.0  # pushback: the server said not to retry


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A route's `retries`: how many attempts in all (the first included), on which statuses."""

    max_attempts: int
    retry_on: frozenset[int]
    per_try_timeout: float | None = None
    initial_backoff: float = INITIAL_BACKOFF
    max_backoff: float = MAX_BACKOFF
    multiplier: float = BACKOFF_MULTIPLIER

    @classmethod
    def from_retries(
        cls, attempts: int, retry_on: frozenset[int], per_try_timeout: float | None
    ) -> RetryPolicy:
        """Istio's `attempts` counts retries; A6 caps the attempts, the first one included, at 5."""
        return cls(min(attempts + 1, MAX_ATTEMPTS), retry_on, per_try_timeout)

    def retryable(self, status: int) -> bool:
        return status in self.retry_on


# The gRPC statuses in Istio's default retryOn, when `retries` gives none.
DEFAULT_RETRY_ON: frozenset[int] = frozenset({Code.UNAVAILABLE, Code.CANCELLED})


def backoff(policy: RetryPolicy, n: int, rand: random.Random) -> float:
    """Seconds to wait before retry n (1 for the first retry): min(initial·multiplier^(n-1), max),
    jittered by ±20%."""
    base = min(policy.initial_backoff * policy.multiplier ** (n - 1), policy.max_backoff)
    return base * (1.0 - JITTER + 2.0 * JITTER * rand.random())


def pushback(value: bytes | None) -> float | None:
    """The server's `grpc-retry-pushback-ms`: None when absent, seconds to wait, or STOP when the
    value is negative or not an integer (A6: the server asks for no retry)."""
    if value is None:
        return None
    text = value.strip()
    if not text or not (text.isdigit() or (text[:1] == b"-" and text[1:].isdigit())):
        return STOP
    millis = int(text)
    if millis < 0 or millis > 2**31 - 1:
        return STOP
    return millis / 1000.0


@dataclass(frozen=True, slots=True)
class RetryLimits:
    """The sidecar's limits on retries (its config's `retry_budget` and `retry_throttling`)."""

    budget_percent: float = 20.0
    min_retry_concurrency: int = 3
    throttle_max_tokens: float | None = None  # None: no A6 throttling (gRPC's default too)
    throttle_token_ratio: float = 0.1
    buffer_bytes: int = 1 << 20  # a request longer than this commits its call: no more retries
    mirror_bytes: int = 1 << 20  # a mirrored request longer than this cancels its copy


class Destination:
    """Calls and retries in flight to one destination service, and its A6 throttle tokens."""

    __slots__ = ("active", "limits", "retries_active", "tokens")

    def __init__(self, limits: RetryLimits) -> None:
        self.limits = limits
        self.active = 0  # calls in flight
        self.retries_active = 0  # of those, calls whose current attempt is a retry
        self.tokens = limits.throttle_max_tokens or 0.0

    def budget(self) -> int:
        """How many retries may be in flight now."""
        limits = self.limits
        return max(limits.min_retry_concurrency, int(self.active * limits.budget_percent / 100.0))

    def throttled(self) -> str | None:
        """ "throttle" while A6's tokens are at or below half of the maximum, else None."""
        maximum = self.limits.throttle_max_tokens
        if maximum is not None and self.tokens <= maximum / 2.0:
            return "throttle"
        return None

    def may_retry(self) -> str | None:
        """None when a call may start retrying now, else why not ("throttle" or "budget")."""
        throttled = self.throttled()
        if throttled is not None:
            return throttled
        if self.retries_active >= self.budget():
            return "budget"
        return None

    def attempt_failed(self) -> None:
        """An attempt failed with a retryable status (or pushback said stop): one token less."""
        if self.limits.throttle_max_tokens is not None:
            self.tokens = max(0.0, self.tokens - 1.0)

    def call_succeeded(self) -> None:
        maximum = self.limits.throttle_max_tokens
        if maximum is not None:
            self.tokens = min(maximum, self.tokens + self.limits.throttle_token_ratio)


class Destinations:
    """One Destination per service, made on first use."""

    def __init__(self, limits: RetryLimits | None = None) -> None:
        self.limits = limits or RetryLimits()
        self._by_service: dict[str, Destination] = {}

    def get(self, service: str) -> Destination:
        dest = self._by_service.get(service)
        if dest is None:
            dest = self._by_service[service] = Destination(self.limits)
        return dest
