"""GLOBAL rate limits on a real redis-server: the Lua token bucket (burst, partial grants, the wait
for the next token, refill on Redis's clock, atomic under concurrent sidecars), two limiters
sharing one bucket exactly, and Redis stopped mid-test: the limiters fall back to their local
limit, say so, and go back to the shared bucket when Redis returns."""

from __future__ import annotations

import asyncio
import time

import pytest

from sidecar.config import Address, Policy
from sidecar.ratelimit import BucketsUnavailable, LimitRule, RateLimiter, RateLimits, compile_ratelimits
from sidecar.ratelimit_redis import KEY_PREFIX, RedisBuckets
from sidecar.stats import Stats
from tests.support.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture

pytestmark = pytest.mark.integration


def buckets(server: RedisServer, timeout: float = 0.5) -> RedisBuckets:
    return RedisBuckets(Address.parse(server.address, "redis"), timeout=timeout)


def global_rule(tokens: int, name: str = "all") -> LimitRule:
    limit = {"tokensPerInterval": tokens, "interval": "1h"}
    spec = {"rules": [{"name": name, "limit": limit, "scope": "GLOBAL"}]}
    (rule,) = compile_ratelimits([Policy("RateLimitPolicy", "default", "limits", spec)]).rules
    return rule


def test_the_lua_bucket_grants_its_burst_then_says_when_the_next_token_comes(
    redis_server: RedisServer,
) -> None:
    async def run() -> None:
        shared = buckets(redis_server)
        try:
            assert await shared.take("k", 1.0, 5, 3) == (3, 0.0)
            granted, wait = await shared.take("k", 1.0, 5, 3)  # partial: two left
            assert granted == 2 and 0.9 < wait <= 1.0
            granted, wait = await shared.take("k", 1.0, 5, 1)
            assert granted == 0 and 0.9 < wait <= 1.0
            assert await shared.take("other", 1.0, 5, 1) == (1, 0.0)  # its own bucket
        finally:
            await shared.close()

    asyncio.run(run())
    client = redis_server.client()
    state = client.hgetall(KEY_PREFIX + "k")
    assert float(state["tokens"]) < 0.1
    ttl = client.pttl(KEY_PREFIX + "k")
    assert 5000 < ttl <= 6000  # until it would be full again (5 s at 1/s), plus a second


def test_the_lua_bucket_refills_on_redis_s_clock(redis_server: RedisServer) -> None:
    async def run() -> None:
        shared = buckets(redis_server)
        try:
            assert await shared.take("fast", 1000.0, 10, 10) == (10, 0.0)
            deadline = time.monotonic() + 5.0
            while (await shared.take("fast", 1000.0, 10, 1))[0] != 1:  # a token each millisecond
                assert time.monotonic() < deadline, "no token came back"
            assert await shared.take("fast", 1000.0, 10, 1000) <= (10, 0.001)  # never past the burst
        finally:
            await shared.close()

    asyncio.run(run())


def test_concurrent_takes_from_several_clients_never_grant_more_than_the_bucket(
    redis_server: RedisServer,
) -> None:
    async def run() -> int:
        clients = [buckets(redis_server, timeout=5.0) for _ in range(4)]
        try:
            results = await asyncio.gather(
                *(c.take("shared", 1 / 3600, 100, 3) for _ in range(25) for c in clients)
            )
        finally:
            for c in clients:
                await c.close()
        return sum(granted for granted, _ in results)

    assert asyncio.run(run()) == 100


def test_an_unreachable_redis_is_buckets_unavailable_at_once(redis_server: RedisServer) -> None:
    redis_server.stop()

    async def run() -> None:
        shared = buckets(redis_server, timeout=0.2)
        try:
            started = time.monotonic()
            with pytest.raises(BucketsUnavailable, match="ConnectionError"):
                await shared.take("k", 1.0, 5, 1)
            assert time.monotonic() - started < 1.0  # no retries, no long timeouts
        finally:
            await shared.close()

    asyncio.run(run())


def test_two_limiters_share_one_bucket_and_fall_back_while_redis_is_away(redis_server: RedisServer) -> None:
    shared_rule = global_rule(30)
    other = global_rule(4, "other")

    async def run() -> None:
        a, b = (
            RateLimiter(Stats(), buckets(redis_server), key_prefix="default/users", retry_seconds=0.05)
            for _ in range(2)
        )
        try:

            async def call(limiter: RateLimiter, rule: LimitRule) -> bool:
                allowed = limiter.check(rule, "") is None
                await limiter.idle()  # as if the next call came after Redis answered
                return allowed

            through = [await call(limiter, shared_rule) for _ in range(40) for limiter in (a, b)]
            assert sum(through) == 30
            assert a.counts_of(shared_rule).allowed == 15
            assert b.counts_of(shared_rule).allowed == 15

            redis_server.stop()
            # The first call is admitted on credit and its lease request finds Redis gone; the
            # rest are decided by this sidecar's own bucket (4 tokens).
            assert sum([await call(a, other) for _ in range(10)]) == 5
            assert a.status(RateLimits((other,))) == {
                "redis": {
                    "address": redis_server.address,
                    "state": "unreachable",
                    "errors": 1,
                    "last_error": a.redis.last_error if a.redis is not None else "",
                    "down_since": a.redis.down_since if a.redis is not None else None,
                },
                "rules": [
                    {
                        "policy": "default/limits",
                        "rule": "other",
                        "limit": "4 per 3600s, burst 4",
                        "scope": "GLOBAL",
                        "mode": "local fallback",
                        "allowed": 5,
                        "limited": 5,
                        "fallback": 9,
                        "failed_closed": 0,
                    }
                ],
            }
            assert a.redis is not None and "Error" in a.redis.last_error
            assert a.stats.counters["inbound.ratelimit_fallback"] == 9
            assert a.stats.counters["ratelimit.redis_errors"] == 1

            redis_server.start()  # on the same port
            deadline = time.monotonic() + 10.0
            while not a.redis.up:
                assert time.monotonic() < deadline, "the limiter did not notice Redis came back"
                await asyncio.sleep(0.05)  # past retry_seconds: the next call probes
                await call(a, other)
            assert a.status(RateLimits((other,)))["rules"][0]["mode"] == "global"  # type: ignore[index]
        finally:
            await a.close()
            await b.close()

    asyncio.run(run())
