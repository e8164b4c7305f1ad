"""Rate limits: the pushed RateLimitPolicies compiled per snapshot, and the buckets that outlive snapshots.

`compile_ratelimits(policies)` turns the RateLimitPolicy specs among a snapshot's policies into
immutable `LimitRule`s (matchers, the rate in tokens per second, the burst, the bucket key, the
scope). `RateLimiter` is the sidecar's one long-lived limiter: it holds the token buckets, so a
new snapshot that keeps a rule keeps its buckets (a rule whose limit changed starts full), and
decides each call synchronously, on the relay's path:

- LOCAL rules take a token from a `TokenBucket` of this sidecar.
- GLOBAL rules take a token from a `LeasedQuota`: tokens this sidecar leased in batches from the
  service's shared bucket in Redis (`sidecar.ratelimit_redis`), refilled in the background before
  they run out. No call waits for Redis. When the lease is spent and Redis has not said the shared
  bucket is empty, a call is admitted on credit (at most one batch), paid back from the next
  grant; once Redis says it is empty, calls are refused until it said the next token arrives. So
  each sidecar can overshoot the shared limit by at most one batch per Redis round trip, and hold
  at most one batch idle (docs/rate-limits.md).
- While Redis is unreachable (or not configured) a GLOBAL rule falls back: `failureMode: OPEN`
  enforces the rule's limit with this sidecar's own bucket, `CLOSED` refuses its calls
  (UNAVAILABLE). One lease request every `retry_seconds` probes whether Redis is back; /stats
  and /metrics say which way each rule is deciding.

A spec the sidecar cannot use raises `PolicyRejected` naming the field; discovery NACKs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from control_plane.policy.fields import parse_duration
from sidecar.authz import Patterns, Peer, _patterns
from sidecar.config import Policy
from sidecar.errors import MeshError, RateLimited, RateLimitUnavailable
from sidecar.stats import Stats
from sidecar.tasks import cancel_all
from sidecar.traffic import PolicyRejected, _dicts, _get

log = logging.getLogger(__name__)

KIND = "RateLimitPolicy"
KEYS = ("RULE", "METHOD", "PRINCIPAL")
SCOPES = ("LOCAL", "GLOBAL")
FAILURE_MODES = ("OPEN", "CLOSED")
MAX_BUCKETS = 10_000  # per sidecar; past it, full (idle) buckets are dropped, then the oldest
_EPSILON = 1e-9  # float refills that should make a whole token but fall short by rounding

Clock = Callable[[], float]


# ---------------------------------------------------------------------------- compiled rules


@dataclass(frozen=True, slots=True)
class LimitRule:
    policy: str  # "namespace/name"
    name: str
    paths: Patterns | None  # None: every method
    principals: Patterns | None  # None: every caller
    tokens: int  # per interval
    interval: float  # seconds
    burst: int
    key: str  # RULE | METHOD | PRINCIPAL
    scope: str  # LOCAL | GLOBAL
    fail_closed: bool  # GLOBAL: refuse while Redis is unreachable
    message: str = ""  # what a refused caller reads
    # Buckets are kept across snapshots while this stays the same (strings: their hash is cached).
    bucket_id: str = ""
    counts_id: str = ""  # the rule's counters: policy, rule and scope

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self.tokens / self.interval

    def matches(self, path: str, peer: Peer) -> bool:
        if self.paths is not None and not self.paths(path):
            return False
        principals = self.principals
        return principals is None or principals(peer.spiffe_id) or principals(peer.bare)

    def describe(self) -> str:
        """`10 per 1s, burst 20, per caller`."""
        per = {"RULE": "", "METHOD": ", per method", "PRINCIPAL": ", per caller"}[self.key]
        return f"{self.tokens} per {_seconds(self.interval)}, burst {self.burst}{per}"


@dataclass(frozen=True, slots=True)
class RateLimits:
    rules: tuple[LimitRule, ...]

    @property
    def empty(self) -> bool:
        return not self.rules

    @property
    def needs_peer(self) -> bool:
        return any(rule.principals is not None for rule in self.rules)


NO_LIMITS = RateLimits(())


def _seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:g}s"


def _choice(spec: Mapping[str, Any], key: str, path: str, choices: tuple[str, ...], default: str) -> str:
    value = _get(spec, key, str, path, default)
    if value not in choices:
        raise PolicyRejected(f"{path}.{key}", f"{value!r} is not one of {', '.join(choices)}")
    return str(value)


def _positive_int(spec: Mapping[str, Any], key: str, path: str, default: int | None = None) -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PolicyRejected(f"{path}.{key}", f"expected an integer >= 1, got {value!r}")
    return value


def _rule(policy: Policy, spec: Mapping[str, Any], index: int, path: str) -> LimitRule:
    name = _get(spec, "name", str, path, str(index))
    match = _get(spec, "match", dict, path, {})
    paths = _patterns(match, "paths", f"{path}.match")
    principals = _patterns(match, "principals", f"{path}.match")
    limit = _get(spec, "limit", dict, path)
    if limit is None:
        raise PolicyRejected(f"{path}.limit", "required")
    limit_path = f"{path}.limit"
    tokens = _positive_int(limit, "tokensPerInterval", limit_path)
    interval_text = _get(limit, "interval", str, limit_path)
    if interval_text is None:
        raise PolicyRejected(f"{limit_path}.interval", "required")
    try:
        interval = parse_duration(interval_text)
    except ValueError as exc:
        raise PolicyRejected(f"{limit_path}.interval", str(exc)) from None
    if interval <= 0:
        raise PolicyRejected(f"{limit_path}.interval", "must be longer than 0")
    burst = _positive_int(limit, "burst", limit_path, tokens)
    key = _choice(spec, "key", path, KEYS, "RULE")
    scope = _choice(spec, "scope", path, SCOPES, "LOCAL")
    fail_closed = _choice(spec, "failureMode", path, FAILURE_MODES, "OPEN") == "CLOSED"
    ref = f"{policy.namespace}/{policy.name}"
    rule = LimitRule(ref, name, paths, principals, tokens, interval, burst, key, scope, fail_closed)
    return dataclasses.replace(
        rule,
        message=f"rate limited by RateLimitPolicy {ref}, rule {name} ({rule.describe()})",
        bucket_id=f"{ref}\0{name}\0{tokens}\0{interval!r}\0{burst}\0{key}\0{scope}",
        counts_id=f"{ref}\0{name}\0{scope}",
    )


def compile_ratelimits(policies: Iterable[Policy]) -> RateLimits:
    """Compile the RateLimitPolicies among `policies`, in (namespace, name) order and their rules in
    order; PolicyRejected naming the field when one cannot be used."""
    indexed = [(i, p) for i, p in enumerate(policies) if p.kind == KIND]
    if not indexed:
        return NO_LIMITS
    rules: list[LimitRule] = []
    for index, policy in sorted(indexed, key=lambda t: (t[1].namespace, t[1].name)):
        path = f"policies[{index}].spec"
        entries = _dicts(policy.spec, "rules", path)
        if not entries:
            raise PolicyRejected(f"{path}.rules", "a RateLimitPolicy needs at least one rule")
        names: set[str] = set()
        for i, (rule_path, spec) in enumerate(entries):
            rule = _rule(policy, spec, i, rule_path)
            if rule.name in names:
                raise PolicyRejected(f"{rule_path}.name", f"duplicate rule name {rule.name!r}")
            names.add(rule.name)
            rules.append(rule)
    return RateLimits(tuple(rules))


# ---------------------------------------------------------------------------- local buckets


class TokenBucket:
    """`burst` tokens at most, refilled continuously at `rate` per second on the injected clock."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float, count: float = 1.0) -> bool:
        tokens = self.tokens
        if now > self.stamp:  # refill: `burst` at most
            tokens += (now - self.stamp) * self.rate
            if tokens > self.burst:
                tokens = self.burst
            self.stamp = now
        if tokens + _EPSILON >= count:
            self.tokens = tokens - count if tokens > count else 0.0
            return True
        self.tokens = tokens
        return False

    def full(self, now: float) -> bool:
        self.take(now, 0.0)  # refills
        return self.tokens >= self.burst

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate:g}/s, burst={self.burst:g}, tokens={self.tokens:.3f})"


# ---------------------------------------------------------------------------- global buckets


class BucketsUnavailable(Exception):
    """The shared buckets (Redis) could not be reached or did not answer in time."""


class SharedBuckets(Protocol):
    """Where GLOBAL rules keep their buckets (`sidecar.ratelimit_redis.RedisBuckets`)."""

    address: str

    async def take(self, key: str, rate: float, burst: int, want: int) -> tuple[int, float]:
        """Take up to `want` tokens from the bucket `key` (created full): (tokens granted, seconds
        until the next token when fewer than `want` were granted, else 0). BucketsUnavailable."""
        ...

    async def close(self) -> None: ...


def lease_batch(rule: LimitRule) -> int:
    """Tokens leased from the shared bucket at once: about 50 ms of the rule's rate, at most a tenth
    of its burst, at least one. Small batches keep a sidecar from holding tokens others need."""
    return max(1, min(math.ceil(rule.rate * 0.05), rule.burst // 10))


class LeasedQuota:
    """One sidecar's share of one shared bucket: tokens leased (negative: admitted on credit),
    whether a lease request is in flight, and until when Redis said the bucket is empty."""

    __slots__ = ("batch", "empty_until", "fetching", "lease")

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.lease = 0.0
        self.fetching = False
        self.empty_until = -math.inf

    def __repr__(self) -> str:
        return f"LeasedQuota(lease={self.lease:g}, batch={self.batch}, fetching={self.fetching})"


@dataclass(slots=True)
class RedisState:
    """What the sidecar knows of its Redis: reachable or not, since when, and why not."""

    address: str
    up: bool = True
    errors: int = 0
    last_error: str = ""
    down_since: float | None = None  # wall clock (time.time), for people
    retry_at: float = -math.inf  # the limiter's clock

    def as_json(self) -> dict[str, object]:
        return {
            "address": self.address,
            "state": "up" if self.up else "unreachable",
            "errors": self.errors,
            "last_error": self.last_error,
            "down_since": self.down_since,
        }


@dataclass(slots=True)
class RuleCounts:
    policy: str
    rule: str
    scope: str
    allowed: int = 0
    limited: int = 0
    fallback: int = 0  # decided by this sidecar's own bucket because Redis was unreachable
    failed_closed: int = 0  # refused because Redis was unreachable (failureMode CLOSED)


# ---------------------------------------------------------------------------- the limiter


@dataclass
class RateLimiter:
    """The sidecar's buckets and counters; `check` decides one call for one rule."""

    stats: Stats
    shared: SharedBuckets | None = None  # None: no Redis configured, GLOBAL rules fall back
    key_prefix: str = ""  # namespace/service: GLOBAL buckets are shared by a service's sidecars
    retry_seconds: float = 1.0
    clock: Clock = time.monotonic
    spawn: Callable[[Awaitable[None]], object] | None = None  # runs a lease request (default: a task)
    max_buckets: int = MAX_BUCKETS
    _buckets: dict[tuple[object, ...], TokenBucket] = field(default_factory=dict)
    _quotas: dict[tuple[object, ...], LeasedQuota] = field(default_factory=dict)
    counts: dict[str, RuleCounts] = field(default_factory=dict)  # by LimitRule.counts_id
    redis: RedisState | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.shared is not None:
            self.redis = RedisState(self.shared.address)

    def check(self, rule: LimitRule, key: str) -> MeshError | None:
        """None when the call may go on (a token taken), else the error to refuse it with."""
        counts = self.counts.get(rule.counts_id)
        if counts is None:
            counts = self.counts[rule.counts_id] = RuleCounts(rule.policy, rule.name, rule.scope)
        now = self.clock()
        if rule.scope == "GLOBAL":
            redis = self.redis
            if redis is not None and redis.up:
                allowed = self._take_leased(rule, key, now)
            else:
                if redis is not None and now >= redis.retry_at:
                    redis.retry_at = now + self.retry_seconds  # one probe per retry interval
                    quota = self._quota(rule, key)
                    if not quota.fetching:
                        self._lease(rule, key, quota)
                counts.fallback += 1
                self.stats.incr("inbound.ratelimit_fallback")
                if rule.fail_closed:
                    counts.failed_closed += 1
                    self.stats.incr("inbound.ratelimit_failed_closed")
                    return RateLimitUnavailable(
                        f"rate limit service unavailable (RateLimitPolicy {rule.policy}, rule {rule.name} "
                        "fails closed)"
                    )
                allowed = self._take_local(rule, key, now)
        else:
            allowed = self._take_local(rule, key, now)
        if allowed:
            counts.allowed += 1
            return None
        counts.limited += 1
        self.stats.incr("inbound.ratelimit_limited")
        return RateLimited(rule.message)

    def counts_of(self, rule: LimitRule) -> RuleCounts:
        return self.counts.get(rule.counts_id) or RuleCounts(rule.policy, rule.name, rule.scope)

    # ------------------------------------------------------------ local

    def _take_local(self, rule: LimitRule, key: str, now: float) -> bool:
        bucket_key = (rule.bucket_id, key)
        bucket = self._buckets.get(bucket_key)
        if bucket is None:
            if len(self._buckets) >= self.max_buckets:
                self._prune(now)
            bucket = self._buckets[bucket_key] = TokenBucket(rule.rate, rule.burst, now)
        return bucket.take(now)

    def _prune(self, now: float) -> None:
        # A full bucket is the same as no bucket: dropping those loses nothing.
        self._buckets = {k: b for k, b in self._buckets.items() if not b.full(now)}
        if len(self._buckets) >= self.max_buckets:
            keep = list(self._buckets.items())[self.max_buckets // 2 :]
            self._buckets = dict(keep)

    # ------------------------------------------------------------ global

    def _quota(self, rule: LimitRule, key: str) -> LeasedQuota:
        quota_key = (rule.bucket_id, key)
        quota = self._quotas.get(quota_key)
        if quota is None:
            if len(self._quotas) >= self.max_buckets:
                self._quotas = dict(list(self._quotas.items())[self.max_buckets // 2 :])
            quota = self._quotas[quota_key] = LeasedQuota(lease_batch(rule))
        return quota

    def _take_leased(self, rule: LimitRule, key: str, now: float) -> bool:
        quota = self._quota(rule, key)
        if quota.lease >= 1.0:
            quota.lease -= 1.0
            allowed = True
        elif now < quota.empty_until:
            allowed = False  # Redis said the shared bucket is empty until then
        elif quota.lease > -quota.batch:
            quota.lease -= 1.0  # on credit, paid from the next grant
            allowed = True
        else:
            allowed = False  # a batch on credit already: wait for Redis
        if not quota.fetching and quota.lease <= quota.batch / 2 and now >= quota.empty_until:
            self._lease(rule, key, quota)
        return allowed

    def _lease(self, rule: LimitRule, key: str, quota: LeasedQuota) -> None:
        quota.fetching = True
        want = max(1, math.ceil(quota.batch - quota.lease))
        request = self._request(rule, key, quota, want)
        if self.spawn is not None:
            self.spawn(request)
            return
        task = asyncio.get_running_loop().create_task(request)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def shared_key(self, rule: LimitRule, key: str) -> str:
        return f"{self.key_prefix}/{rule.policy}/{rule.name}/{key}"

    async def _request(self, rule: LimitRule, key: str, quota: LeasedQuota, want: int) -> None:
        shared, redis = self.shared, self.redis
        assert shared is not None and redis is not None
        try:
            granted, wait = await shared.take(self.shared_key(rule, key), rule.rate, rule.burst, want)
        except BucketsUnavailable as exc:
            self._redis_failed(redis, str(exc))
        else:
            if not redis.up:
                log.warning("rate limits: redis %s reachable again", redis.address)
            redis.up = True
            redis.down_since = None
            quota.lease += granted
            if granted < want:
                quota.empty_until = self.clock() + wait
        finally:
            quota.fetching = False

    def _redis_failed(self, redis: RedisState, error: str) -> None:
        if redis.up:
            log.warning(
                "rate limits: redis %s unreachable (%s): GLOBAL rules fall back to their failure mode",
                redis.address,
                error,
            )
            redis.down_since = time.time()
        redis.up = False
        redis.errors += 1
        redis.last_error = error
        redis.retry_at = self.clock() + self.retry_seconds
        self.stats.incr("ratelimit.redis_errors")

    async def idle(self) -> None:
        """Wait for the lease requests in flight to be answered (or to fail)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        await cancel_all(list(self._tasks))
        if self.shared is not None:
            await self.shared.close()

    # ------------------------------------------------------------ reporting

    def status(self, rules: RateLimits) -> dict[str, object]:
        """/stats' `rate_limits`: Redis's state and each rule in force with its counts."""
        redis = self.redis
        falling_back = redis is None or not redis.up
        shown = []
        for rule in rules.rules:
            counts = self.counts_of(rule)
            mode = "local"
            if rule.scope == "GLOBAL":
                mode = "global"
                if falling_back:
                    mode = "failing closed" if rule.fail_closed else "local fallback"
            shown.append(
                {
                    "policy": rule.policy,
                    "rule": rule.name,
                    "limit": rule.describe(),
                    "scope": rule.scope,
                    "mode": mode,
                    "allowed": counts.allowed,
                    "limited": counts.limited,
                    "fallback": counts.fallback,
                    "failed_closed": counts.failed_closed,
                }
            )
        return {"redis": None if redis is None else redis.as_json(), "rules": shown}


class RateLimitCollector(Collector):
    """/metrics: decisions per policy, rule and scope, and whether Redis is reachable."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    def collect(self) -> Iterable[Metric]:
        return list(self._collect())

    def _collect(self) -> Iterator[Metric]:
        decisions = CounterMetricFamily(
            "grpc_mesh_ratelimit_decisions",
            "Inbound calls a rate limit rule decided, by decision "
            "(allowed, limited; fallback: decided locally while Redis was unreachable).",
            labels=["policy", "rule", "scope", "decision"],
        )
        for _, counts in sorted(self.limiter.counts.items()):
            for decision in ("allowed", "limited", "fallback", "failed_closed"):
                labels = [counts.policy, counts.rule, counts.scope, decision]
                decisions.add_metric(labels, getattr(counts, decision))
        yield decisions
        redis = self.limiter.redis
        if redis is not None:
            yield GaugeMetricFamily(
                "grpc_mesh_ratelimit_redis_up",
                "1 while the Redis of GLOBAL rate limits answers, 0 while they fall back.",
                value=1 if redis.up else 0,
            )
