"""Microbenchmark: what rate limits add to deciding one inbound call (the chain the relay runs when
a call's headers arrive), side by side: no policy, a LOCAL rule, a LOCAL per-caller rule, and a
GLOBAL rule leasing from a real redis-server in batches of 10,000 (lease requests run on the loop
between calls, as they do in a sidecar); and the round trip of one lease request to that Redis.

    .venv/bin/python -m bench.rate_limit
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sidecar.call import CallHead, Handler, Target
from sidecar.config import Address, Policy
from sidecar.errors import MeshError
from sidecar.filters.rate_limit import RateLimit, RateLimitConfig
from sidecar.ratelimit import RateLimiter, compile_ratelimits
from sidecar.ratelimit_redis import RedisBuckets
from sidecar.stats import Stats
from tests.support.redis_server import RedisServer

N = 200_000
PEERS = [f"spiffe://cluster.local/ns/default/sa/caller-{i}" for i in range(16)]
HEADS = [CallHead("/demo.v1.Users/GetUser", "users", (), PEERS[i % len(PEERS)], None) for i in range(N)]
TARGET = Target("users", None, b"users", b"http")  # type: ignore[arg-type]
HUGE = {"tokensPerInterval": 1_000_000_000, "interval": "1s"}  # never refuses: the cost of admitting


def _app(head: CallHead) -> Target:
    return TARGET


def _chain(rule: dict[str, Any] | None, limiter: RateLimiter) -> Handler:
    if rule is None:
        return _app
    limits = compile_ratelimits([Policy("RateLimitPolicy", "default", "bench", {"rules": [rule]})])
    return RateLimit(_app, RateLimitConfig(limits, limiter))


async def _per_call(chain: Handler) -> float:
    start = time.perf_counter()
    for i, head in enumerate(HEADS):
        with contextlib.suppress(MeshError):  # counted by the limiter (printed below): expect none
            chain(head)
        if i % 64 == 63:
            await asyncio.sleep(0)  # lease requests run between reads, as on a sidecar's loop
    return (time.perf_counter() - start) / N * 1e6


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp))
        redis.start()
        shared = RedisBuckets(Address.parse(redis.address, "redis"))
        try:
            limiter = RateLimiter(Stats(), shared, key_prefix="default/users")
            rows = [
                ("no RateLimitPolicy", None),
                ("LOCAL rule", {"limit": HUGE}),
                ("LOCAL per caller (16 callers)", {"limit": HUGE, "key": "PRINCIPAL"}),
                ("GLOBAL rule, leased from Redis", {"limit": {**HUGE, "burst": 100_000}, "scope": "GLOBAL"}),
            ]
            base = 0.0
            print("| chain | µs per call | vs no policy |")
            print("|---|---|---|")
            for name, rule in rows:
                micros = min([await _per_call(_chain(rule, limiter)) for _ in range(3)])
                await limiter.idle()
                base = base or micros
                print(f"| {name} | {micros:.2f} | {micros / base:.2f}x |")
            trips = []
            for _ in range(1000):
                start = time.perf_counter()
                await shared.take("bench/round-trip", 1e9, 1_000_000_000, 50)
                trips.append((time.perf_counter() - start) * 1e6)
            trips.sort()
            print(
                f"\nlease request to redis-server on loopback: p50 {statistics.median(trips):.0f} µs, "
                f"p99 {trips[int(len(trips) * 0.99) - 1]:.0f} µs (off the call path)"
            )
            for counts in limiter.counts.values():
                print(f"{counts.scope} decisions: {counts.allowed} allowed, {counts.limited} limited")
        finally:
            await limiter.close()
            redis.stop()


if __name__ == "__main__":
    asyncio.run(main())
