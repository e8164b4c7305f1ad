"""Rate limits (sidecar.ratelimit, filters/rate_limit.py) on a fake clock: token-bucket math and
burst, per-rule, per-method and per-principal buckets, RESOURCE_EXHAUSTED naming the rule and
counted, buckets kept across snapshots, policies the sidecar cannot use NACKed; and GLOBAL rules'
leased quota against an in-memory stand-in for Redis (tests/integration/test_rate_limit_redis.py
runs the real one): batches, credit, refusal once the shared bucket is empty, and the fallback
(OPEN: the local limit, CLOSED: UNAVAILABLE) while it is unreachable."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from sidecar.call import CallHead, Target
from sidecar.config import Address, ConfigError, Policy, RateLimitSettings, parse_config
from sidecar.discovery import SnapshotRejected, from_proto
from sidecar.errors import PermissionDenied, RateLimited, RateLimitUnavailable, status_for
from sidecar.filters.rate_limit import RateLimit, RateLimitConfig
from sidecar.grpc_wire import Code
from sidecar.ratelimit import (
    BucketsUnavailable,
    LimitRule,
    RateLimitCollector,
    RateLimiter,
    RateLimits,
    TokenBucket,
    compile_ratelimits,
    lease_batch,
)
from sidecar.stats import Stats
from sidecar.traffic import PolicyRejected
from tests.unit.sidecar.test_authorization import _snapshot as snapshot_of

WEB = "spiffe://cluster.local/ns/default/sa/web"
ORDERS = "spiffe://cluster.local/ns/default/sa/orders"
CREATE = "/demo.v1.Users/CreateUser"
GET = "/demo.v1.Users/GetUser"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def rule(**fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"limit": {"tokensPerInterval": 10, "interval": "1s"}}
    spec.update(fields)
    return spec


def limits(*rules: dict[str, Any], name: str = "limits") -> RateLimits:
    return compile_ratelimits([Policy("RateLimitPolicy", "default", name, {"rules": list(rules)})])


def head(path: str = GET, peer: str | None = WEB) -> CallHead:
    return CallHead(path, "users", (), peer, None)


class App:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, head: CallHead) -> Target:
        self.calls += 1
        return Target("users", None, b"users", b"http")  # type: ignore[arg-type]


def chain(compiled: RateLimits, limiter: RateLimiter) -> tuple[RateLimit, App]:
    app = App()
    return RateLimit(app, RateLimitConfig(compiled, limiter)), app


def admitted(handler: RateLimit, count: int, **call: Any) -> int:
    """How many of `count` calls got through."""
    through = 0
    for _ in range(count):
        try:
            handler(head(**call))
        except (RateLimited, RateLimitUnavailable):
            continue
        through += 1
    return through


# ---------------------------------------------------------------------------- bucket math


def test_a_bucket_starts_full_and_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=5, now=0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert not bucket.take(0.05)  # half a token
    assert bucket.take(0.1)  # one token after 100 ms at 10/s
    assert not bucket.take(0.1)
    assert bucket.full(60.0) and bucket.tokens == 5  # a minute later: the burst, no more
    assert repr(bucket) == "TokenBucket(rate=10/s, burst=5, tokens=5.000)"


def test_refills_in_small_steps_add_up_to_whole_tokens() -> None:
    bucket = TokenBucket(rate=10.0, burst=1, now=0.0)
    assert bucket.take(0.0)
    now = 0.0
    for _ in range(10):  # 0.1 s as ten float steps of 0.01 s
        now += 0.01
        bucket.take(now, 0.0)
    assert bucket.take(now)


def test_a_clock_going_back_adds_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now=10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert not bucket.take(10.5)
    assert bucket.take(11.0)


def test_rule_limit_burst_then_sustained_rate_on_a_fake_clock() -> None:
    clock = FakeClock()
    handler, app = chain(
        limits(rule(limit={"tokensPerInterval": 5, "interval": "1s", "burst": 10})),
        RateLimiter(Stats(), clock=clock),
    )
    assert admitted(handler, 15) == 10  # the burst
    clock.advance(1.0)
    assert admitted(handler, 15) == 5  # then 5 a second
    clock.advance(0.4)
    assert admitted(handler, 15) == 2
    assert app.calls == 17


def test_burst_defaults_to_the_tokens_per_interval() -> None:
    (compiled,) = limits(rule(limit={"tokensPerInterval": 3, "interval": "200ms"})).rules
    assert (compiled.tokens, compiled.interval, compiled.burst, compiled.rate) == (3, 0.2, 3, 15.0)
    assert compiled.describe() == "3 per 200ms, burst 3"


# ---------------------------------------------------------------------------- keys and matches


def test_per_principal_buckets_are_separate() -> None:
    handler, _ = chain(limits(rule(key="PRINCIPAL")), RateLimiter(Stats(), clock=FakeClock()))
    assert admitted(handler, 12, peer=WEB) == 10
    assert admitted(handler, 12, peer=ORDERS) == 10  # its own bucket
    assert admitted(handler, 12, peer=None) == 10  # callers without a SPIFFE ID share one
    assert admitted(handler, 1, peer=WEB) == 0


def test_per_method_buckets_are_separate_and_rule_buckets_shared() -> None:
    clock = FakeClock()
    per_method, _ = chain(limits(rule(key="METHOD")), RateLimiter(Stats(), clock=clock))
    assert admitted(per_method, 12, path=GET) == 10
    assert admitted(per_method, 12, path=CREATE) == 10
    shared, _ = chain(limits(rule()), RateLimiter(Stats(), clock=clock))
    assert admitted(shared, 6, path=GET) + admitted(shared, 6, path=CREATE) == 10


def test_only_matching_calls_take_tokens() -> None:
    handler, _ = chain(
        limits(
            rule(match={"paths": ["/demo.v1.Users/Create*"], "principals": ["cluster.local/ns/default/*"]})
        ),
        RateLimiter(Stats(), clock=FakeClock()),
    )
    assert admitted(handler, 20, path=GET) == 20  # another method
    assert admitted(handler, 20, path=CREATE, peer="spiffe://cluster.local/ns/billing/sa/pay") == 20
    assert admitted(handler, 20, path=CREATE, peer=None) == 20  # no principal: no match
    assert admitted(handler, 20, path=CREATE, peer=WEB) == 10


def test_every_matching_rule_takes_a_token_and_any_refusal_refuses() -> None:
    handler, _ = chain(
        limits(
            rule(name="all", limit={"tokensPerInterval": 100, "interval": "1s"}),
            rule(name="creates", match={"paths": [CREATE]}, limit={"tokensPerInterval": 2, "interval": "1s"}),
        ),
        RateLimiter(Stats(), clock=FakeClock()),
    )
    assert admitted(handler, 5, path=CREATE) == 2
    assert admitted(handler, 200, path=GET) == 95  # "all" counted the 5 creates, refused or not


def test_refusal_is_resource_exhausted_naming_the_policy_and_rule_and_counted() -> None:
    stats = Stats()
    limiter = RateLimiter(stats, clock=FakeClock())
    compiled = limits(
        rule(
            name="per-caller", key="PRINCIPAL", limit={"tokensPerInterval": 1, "interval": "1m", "burst": 2}
        ),
        name="users-limits",
    )
    handler, app = chain(compiled, limiter)
    handler(head())
    handler(head())
    with pytest.raises(RateLimited) as refused:
        handler(head())
    assert status_for(refused.value) == (
        Code.RESOURCE_EXHAUSTED,
        "rate limited by RateLimitPolicy default/users-limits, rule per-caller "
        "(1 per 60s, burst 2, per caller)",
    )
    assert app.calls == 2
    assert stats.counters == {"inbound.ratelimit_limited": 1}
    (shown,) = limiter.status(compiled)["rules"]  # type: ignore[index]
    assert shown == {
        "policy": "default/users-limits",
        "rule": "per-caller",
        "limit": "1 per 60s, burst 2, per caller",
        "scope": "LOCAL",
        "mode": "local",
        "allowed": 2,
        "limited": 1,
        "fallback": 0,
        "failed_closed": 0,
    }
    registry = CollectorRegistry()
    registry.register(RateLimitCollector(limiter))
    text = generate_latest(registry).decode()
    labels = 'policy="default/users-limits",rule="per-caller",scope="LOCAL"'
    assert f'grpc_mesh_ratelimit_decisions_total{{decision="limited",{labels}}} 1.0' in text
    assert f'grpc_mesh_ratelimit_decisions_total{{decision="allowed",{labels}}} 2.0' in text
    assert "grpc_mesh_ratelimit_redis_up" not in text  # no Redis configured


def test_buckets_outlive_a_snapshot_unless_the_limit_changed() -> None:
    limiter = RateLimiter(Stats(), clock=FakeClock())
    first, _ = chain(limits(rule()), limiter)
    assert admitted(first, 10) == 10
    again, _ = chain(limits(rule()), limiter)  # a new snapshot, the same rule
    assert admitted(again, 1) == 0
    changed, _ = chain(limits(rule(limit={"tokensPerInterval": 20, "interval": "1s"})), limiter)
    assert admitted(changed, 25) == 20  # a new limit starts full


def test_full_buckets_are_dropped_past_the_bucket_limit() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Stats(), clock=clock, max_buckets=4)
    handler, _ = chain(
        limits(rule(key="PRINCIPAL", limit={"tokensPerInterval": 1, "interval": "1s"})), limiter
    )
    for i in range(4):
        assert admitted(handler, 1, peer=f"spiffe://td/ns/a/sa/{i}") == 1
    clock.advance(1.0)  # all four are full again: forgetting them changes nothing
    assert admitted(handler, 2, peer="spiffe://td/ns/a/sa/new") == 1
    assert len(limiter._buckets) == 1


# ---------------------------------------------------------------------------- compile


@pytest.mark.parametrize(
    ("spec", "path", "reason"),
    [
        ({"rules": []}, "policies[0].spec.rules", "at least one rule"),
        ({"rules": [{}]}, "policies[0].spec.rules[0].limit", "required"),
        (
            {"rules": [rule(limit={"interval": "1s"})]},
            "policies[0].spec.rules[0].limit.tokensPerInterval",
            ">= 1",
        ),
        (
            {"rules": [rule(limit={"tokensPerInterval": 0, "interval": "1s"})]},
            "policies[0].spec.rules[0].limit.tokensPerInterval",
            "got 0",
        ),
        (
            {"rules": [rule(limit={"tokensPerInterval": 1, "interval": "soon"})]},
            "policies[0].spec.rules[0].limit.interval",
            "is not a duration",
        ),
        (
            {"rules": [rule(limit={"tokensPerInterval": 1, "interval": "1s", "burst": -1})]},
            "policies[0].spec.rules[0].limit.burst",
            "got -1",
        ),
        ({"rules": [rule(key="IP")]}, "policies[0].spec.rules[0].key", "'IP' is not one of RULE, METHOD"),
        ({"rules": [rule(scope="EVERYWHERE")]}, "policies[0].spec.rules[0].scope", "not one of LOCAL"),
        ({"rules": [rule(failureMode="MAYBE")]}, "policies[0].spec.rules[0].failureMode", "not one of OPEN"),
        ({"rules": [rule(match={"paths": ["a*b"]})]}, "policies[0].spec.rules[0].match.paths[0]", "'*' may"),
        (
            {"rules": [rule(match={"principals": "web"})]},
            "policies[0].spec.rules[0].match.principals",
            "a list",
        ),
        ({"rules": [rule(name="a"), rule(name="a")]}, "policies[0].spec.rules[1].name", "duplicate rule"),
    ],
)
def test_a_policy_the_sidecar_cannot_use_is_rejected_naming_the_field(
    spec: Any, path: str, reason: str
) -> None:
    with pytest.raises(PolicyRejected) as rejected:
        compile_ratelimits([Policy("RateLimitPolicy", "default", "bad", spec)])
    assert rejected.value.path == path
    assert reason in rejected.value.reason


def test_discovery_nacks_a_snapshot_with_a_bad_rate_limit_policy(sidecars: Callable[..., Sidecar]) -> None:
    good = snapshot_of([Policy("RateLimitPolicy", "default", "p", {"rules": [rule()]})])
    assert from_proto(good).ratelimits.rules[0].policy == "default/p"
    bad = snapshot_of([Policy("RateLimitPolicy", "default", "p", {"rules": [rule(key="IP")]})])
    with pytest.raises(SnapshotRejected) as rejected:
        from_proto(bad)
    assert rejected.value.path == "policies[0].spec.rules[0].key"


# ---------------------------------------------------------------------------- GLOBAL: leased quota


class FakeShared:
    """The Redis bucket's semantics (sidecar/ratelimit_redis.py's script) on the fake clock; the
    same object stands for one Redis shared by several limiters (sidecars)."""

    address = "127.0.0.1:6379"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.buckets: dict[str, TokenBucket] = {}
        self.requests: list[tuple[str, int]] = []
        self.down = False

    async def take(self, key: str, rate: float, burst: int, want: int) -> tuple[int, float]:
        self.requests.append((key, want))
        if self.down:
            raise BucketsUnavailable("ConnectionError: connection refused")
        now = self.clock()
        bucket = self.buckets.setdefault(key, TokenBucket(rate, burst, now))
        bucket.take(now, 0.0)
        granted = min(want, math.floor(bucket.tokens + 1e-9))
        bucket.tokens -= granted
        wait = 0.0 if granted == want else max(0.001, (1 - bucket.tokens) / rate)
        return granted, wait

    async def close(self) -> None:
        pass


class Sidecar:
    """One limiter and its chain; lease requests wait in `pending` until `settle()` runs them,
    as if Redis answered then."""

    def __init__(self, shared: FakeShared | None, clock: FakeClock, compiled: RateLimits) -> None:
        self.pending: list[Coroutine[Any, Any, None]] = []
        self.stats = Stats()
        self.limiter = RateLimiter(
            self.stats,
            shared,
            key_prefix="default/users",
            clock=clock,
            spawn=self.pending.append,
            retry_seconds=1.0,
        )
        self.handler, self.app = chain(compiled, self.limiter)

    def settle(self) -> None:
        while self.pending:
            asyncio.run(self.pending.pop(0))

    def close(self) -> None:
        for request in self.pending:
            request.close()  # never answered

    def status(self) -> Any:
        return self.limiter.status(self.handler_limits)

    @property
    def handler_limits(self) -> RateLimits:
        return RateLimits(self.handler.rules)


@pytest.fixture
def sidecars() -> Iterator[Callable[..., Sidecar]]:
    made: list[Sidecar] = []

    def make(shared: FakeShared | None, clock: FakeClock, compiled: RateLimits) -> Sidecar:
        made.append(Sidecar(shared, clock, compiled))
        return made[-1]

    yield make
    for sidecar in made:
        sidecar.close()


GLOBAL_100 = rule(scope="GLOBAL", limit={"tokensPerInterval": 100, "interval": "1h", "burst": 100})


def test_lease_batches_are_50ms_of_the_rate_within_a_tenth_of_the_burst() -> None:
    def batch(tokens: int, interval: str, burst: int) -> int:
        (compiled,) = limits(
            rule(limit={"tokensPerInterval": tokens, "interval": interval, "burst": burst})
        ).rules
        return lease_batch(compiled)

    assert batch(1000, "1s", 1000) == 50
    assert batch(1000, "1s", 200) == 20
    assert batch(10, "1s", 10) == 1
    assert batch(100, "1h", 100) == 1


def test_two_sidecars_share_one_global_bucket(sidecars: Callable[..., Sidecar]) -> None:
    clock = FakeClock()
    shared = FakeShared(clock)
    compiled = limits(GLOBAL_100)
    a, b = sidecars(shared, clock, compiled), sidecars(shared, clock, compiled)
    through = 0
    for _ in range(150):  # interleaved, Redis answering between calls
        for sidecar in (a, b):
            through += admitted(sidecar.handler, 1)
            sidecar.settle()
    assert through == 100
    assert shared.buckets["default/users/default/limits/0/"].tokens < 1
    assert {key for key, _ in shared.requests} == {"default/users/default/limits/0/"}
    assert a.app.calls > 30 and b.app.calls > 30
    assert (
        a.stats.counters["inbound.ratelimit_limited"] + b.stats.counters["inbound.ratelimit_limited"] == 200
    )


def test_calls_never_wait_for_redis_credit_is_one_batch_and_repaid(sidecars: Callable[..., Sidecar]) -> None:
    clock = FakeClock()
    shared = FakeShared(clock)
    sidecar = sidecars(shared, clock, limits(GLOBAL_100))
    # Redis has not answered yet: one call on credit (the batch is 1), then refused.
    assert admitted(sidecar.handler, 5) == 1
    assert len(sidecar.pending) == 1  # one lease request in flight, not one per call
    sidecar.settle()  # it grants 2: the debt, and one leased
    assert shared.requests == [("default/users/default/limits/0/", 2)]
    assert admitted(sidecar.handler, 1) == 1
    sidecar.settle()
    assert 100 - shared.buckets["default/users/default/limits/0/"].tokens == 3


def test_once_redis_says_empty_calls_are_refused_until_its_next_token(
    sidecars: Callable[..., Sidecar],
) -> None:
    clock = FakeClock()
    shared = FakeShared(clock)
    sidecar = sidecars(
        shared, clock, limits(rule(scope="GLOBAL", limit={"tokensPerInterval": 2, "interval": "1s"}))
    )
    through = 0
    for _ in range(10):
        through += admitted(sidecar.handler, 1)
        sidecar.settle()
    assert through == 2
    requests = len(shared.requests)
    assert admitted(sidecar.handler, 10) == 0
    assert len(shared.requests) == requests  # known empty: no request until the next token is due
    clock.advance(0.5)  # one token at 2/s
    assert admitted(sidecar.handler, 1) == 1  # on credit: Redis's "empty" has run out
    sidecar.settle()
    assert admitted(sidecar.handler, 3) == 0


def test_redis_unreachable_falls_back_to_the_local_limit_and_says_so(
    sidecars: Callable[..., Sidecar],
) -> None:
    clock = FakeClock()
    shared = FakeShared(clock)
    compiled = limits(rule(scope="GLOBAL", limit={"tokensPerInterval": 5, "interval": "1h"}))
    sidecar = sidecars(shared, clock, compiled)
    shared.down = True
    assert admitted(sidecar.handler, 1) == 1  # on credit while the lease request fails
    sidecar.settle()
    status = sidecar.status()
    assert status["redis"]["state"] == "unreachable"
    assert status["redis"]["last_error"] == "ConnectionError: connection refused"
    assert status["rules"][0]["mode"] == "local fallback"
    assert admitted(sidecar.handler, 10) == 5  # this sidecar's own bucket: the rule's limit
    assert sidecar.stats.counters["inbound.ratelimit_fallback"] == 10
    assert sidecar.stats.counters["ratelimit.redis_errors"] == 1
    assert sidecar.pending == []  # not retried before retry_seconds
    registry = CollectorRegistry()
    registry.register(RateLimitCollector(sidecar.limiter))
    assert "grpc_mesh_ratelimit_redis_up 0.0" in generate_latest(registry).decode()

    clock.advance(1.0)  # retry_seconds: the next call probes, still decided locally
    shared.down = False
    assert admitted(sidecar.handler, 1) == 0  # the local bucket is empty
    assert len(sidecar.pending) == 1
    sidecar.settle()
    assert sidecar.status()["redis"]["state"] == "up"
    assert sidecar.status()["rules"][0]["mode"] == "global"
    assert admitted(sidecar.handler, 1) == 1  # the shared bucket again


def test_fail_closed_refuses_with_unavailable_while_redis_is_unreachable(
    sidecars: Callable[..., Sidecar],
) -> None:
    clock = FakeClock()
    shared = FakeShared(clock)
    compiled = limits(rule(name="strict", scope="GLOBAL", failureMode="CLOSED"))
    sidecar = sidecars(shared, clock, compiled)
    shared.down = True
    admitted(sidecar.handler, 1)
    sidecar.settle()
    with pytest.raises(RateLimitUnavailable) as refused:
        sidecar.handler(head())
    assert status_for(refused.value) == (
        Code.UNAVAILABLE,
        "rate limit service unavailable (RateLimitPolicy default/limits, rule strict fails closed)",
    )
    assert sidecar.status()["rules"][0]["mode"] == "failing closed"
    assert sidecar.stats.counters["inbound.ratelimit_failed_closed"] == 1


def test_without_redis_configured_global_rules_use_their_failure_mode(
    sidecars: Callable[..., Sidecar],
) -> None:
    clock = FakeClock()
    sidecar = sidecars(
        None, clock, limits(rule(scope="GLOBAL", limit={"tokensPerInterval": 3, "interval": "1h"}))
    )
    assert admitted(sidecar.handler, 5) == 3
    assert sidecar.pending == []
    assert sidecar.status()["redis"] is None
    assert sidecar.status()["rules"][0]["mode"] == "local fallback"


def test_global_keys_are_per_principal_when_asked(sidecars: Callable[..., Sidecar]) -> None:
    clock = FakeClock()
    shared = FakeShared(clock)
    sidecar = sidecars(shared, clock, limits(rule(scope="GLOBAL", key="PRINCIPAL")))
    admitted(sidecar.handler, 1, peer=WEB)
    admitted(sidecar.handler, 1, peer=ORDERS)
    sidecar.settle()
    assert [key for key, _ in shared.requests] == [
        f"default/users/default/limits/0/{WEB}",
        f"default/users/default/limits/0/{ORDERS}",
    ]


def test_lease_rules_are_plain_values() -> None:
    (compiled,) = limits(GLOBAL_100).rules
    assert isinstance(compiled, LimitRule)
    assert compiled.bucket_id == "default/limits\x000\x00100\x003600.0\x00100\x00RULE\x00GLOBAL"
    assert compiled.counts_id == "default/limits\x000\x00GLOBAL"


# ---------------------------------------------------------------------------- sidecar config


def config_with(rate_limits: Any, **top: Any) -> Any:
    return parse_config(
        {"service": "users", "listeners": {"admin": "127.0.0.1:0"}, "rate_limits": rate_limits, **top}
    )


def test_config_says_where_redis_is_and_static_mode_takes_policies() -> None:
    settings = config_with(
        {
            "redis": "127.0.0.1:6379",
            "timeout_seconds": 0.1,
            "retry_seconds": 2,
            "policies": [{"name": "limits", "spec": {"rules": [rule(key="PRINCIPAL")]}}],
        },
        namespace="shop",
    ).rate_limits
    assert settings == RateLimitSettings(
        Address("127.0.0.1", 6379),
        0.1,
        2.0,
        (Policy("RateLimitPolicy", "shop", "limits", {"rules": [rule(key="PRINCIPAL")]}),),
    )
    assert config_with(None).rate_limits == RateLimitSettings()
    (compiled,) = compile_ratelimits(settings.policies).rules
    assert compiled.message.startswith("rate limited by RateLimitPolicy shop/limits, rule 0")


@pytest.mark.parametrize(
    ("rate_limits", "path", "reason"),
    [
        ({"redis": "nowhere"}, "rate_limits.redis", "expected 'host:port'"),
        ({"redis": "127.0.0.1:0"}, "rate_limits.redis", "a real port"),
        ({"timeout_seconds": 0}, "rate_limits.timeout_seconds", "> 0"),
        ({"retry_seconds": "1s"}, "rate_limits.retry_seconds", "a number of seconds"),
        ({"sentinel": "x"}, "rate_limits.sentinel", "unknown field"),
        ({"policies": {}}, "rate_limits.policies", "expected a list"),
        ({"policies": [{"spec": {"rules": [rule()]}}]}, "rate_limits.policies[0].name", "expected a name"),
        (
            {"policies": [{"name": "a", "spec": {"rules": [rule(key="IP")]}}]},
            "rate_limits.policies[0].spec.rules[0].key",
            "must be one of RULE, METHOD or PRINCIPAL",
        ),
        (
            {
                "policies": [
                    {"name": "a", "spec": {"rules": [rule()]}},
                    {"name": "a", "spec": {"rules": [rule()]}},
                ]
            },
            "rate_limits.policies[1].name",
            "duplicate policy name",
        ),
    ],
)
def test_bad_rate_limit_config_names_the_field(rate_limits: Any, path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as error:
        config_with(rate_limits)
    assert error.value.path == path
    assert reason in error.value.reason


def test_policies_in_the_file_are_refused_with_a_control_plane(tmp_path: Any) -> None:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    tls = {
        "cert": str(tmp_path / "cert.pem"),
        "key": str(tmp_path / "key.pem"),
        "ca": str(tmp_path / "ca.pem"),
    }
    with pytest.raises(ConfigError) as error:
        config_with(
            {"policies": [{"name": "a", "spec": {"rules": [rule()]}}]},
            control_plane="127.0.0.1:15010",
            tls=tls,
        )
    assert error.value.path == "rate_limits.policies"
    assert "pushed" in error.value.reason


def test_a_static_sidecar_enforces_the_policies_in_its_file_and_shows_them_in_stats() -> None:
    from sidecar.app import Sidecar

    sidecar = Sidecar(config_with({"policies": [{"name": "limits", "spec": {"rules": [rule(name="all")]}}]}))
    assert [r.name for r in sidecar.snapshot.ratelimits.rules] == ["all"]
    shown = sidecar.stats.as_json()["rate_limits"]
    assert shown == {
        "redis": None,
        "rules": [
            {
                "policy": "default/limits",
                "rule": "all",
                "limit": "10 per 1s, burst 10",
                "scope": "LOCAL",
                "mode": "local",
                "allowed": 0,
                "limited": 0,
                "fallback": 0,
                "failed_closed": 0,
            }
        ],
    }


def test_the_inbound_chain_limits_after_authorization(tmp_path: Any) -> None:
    from sidecar.authz import compile_authz
    from sidecar.chain import build_inbound
    from sidecar.h2.stream import Limits
    from sidecar.pool import Pools

    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    tls = {
        "cert": str(tmp_path / "cert.pem"),
        "key": str(tmp_path / "key.pem"),
        "ca": str(tmp_path / "ca.pem"),
    }
    config = config_with(
        None, listeners={"inbound": "127.0.0.1:0", "admin": "127.0.0.1:0"}, app="127.0.0.1:50051", tls=tls
    )
    deny_web = Policy(
        "AuthorizationPolicy",
        "default",
        "no-web",
        {"action": "DENY", "rules": [{"from": [{"source": {"principals": [WEB]}}]}]},
    )
    stats = Stats()
    limiter = RateLimiter(stats, clock=FakeClock())
    handler = build_inbound(
        config,
        Pools(Limits(), None),
        compile_authz([deny_web]),
        stats,
        limits(rule(limit={"tokensPerInterval": 2, "interval": "1h"})),
        limiter,
    )
    for _ in range(5):
        with pytest.raises(PermissionDenied):
            handler(head(peer=WEB))  # refused before the limit: no token spent
    assert handler(head(peer=ORDERS)).service == "users"
    assert handler(head(peer=ORDERS)).service == "users"
    with pytest.raises(RateLimited):
        handler(head(peer=ORDERS))
