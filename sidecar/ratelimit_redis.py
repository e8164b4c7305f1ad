"""The shared token buckets of GLOBAL rate limits, in Redis: one atomic Lua script per lease request.

Each bucket is a Redis hash (`tokens`, `ts` in milliseconds of Redis's own clock, so every sidecar
refills it on the same clock whatever theirs say), created full, refilled continuously at the
rule's rate up to its burst, and expiring once it would be full again (an idle bucket costs
nothing). The script grants up to the tokens asked for — partial grants let several sidecars
share a small bucket — and says how long until the next token when it could not grant them all.

Called off the call path only (`sidecar.ratelimit.RateLimiter` leases in the background), with
short timeouts and no client-side retries: an error is `BucketsUnavailable` at once, and the
limiter falls back.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from sidecar.config import Address
from sidecar.ratelimit import BucketsUnavailable

KEY_PREFIX = "grpc-mesh:ratelimit:"

# KEYS[1]: the bucket. ARGV: rate (tokens per second), burst, tokens wanted.
# Returns {granted, milliseconds until the next token (0 when all were granted)}.
TAKE = """
local rate = tonumber(ARGV[1]) / 1000.0
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
local granted = math.min(want, math.floor(tokens + 1e-9))
tokens = math.max(0, tokens - granted)
local wait = 0
if granted < want then
  wait = math.ceil((1 - tokens) / rate)
  if wait < 1 then wait = 1 end
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate) + 1000)
return {granted, wait}
"""


class RedisBuckets:
    """`SharedBuckets` on one Redis server (redis-py's asyncio client, its own connection pool)."""

    def __init__(self, address: Address, *, timeout: float = 0.25, prefix: str = KEY_PREFIX) -> None:
        self.address = str(address)
        self.timeout = timeout
        self.prefix = prefix
        self.client = Redis(
            host=address.host,
            port=address.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._take = self.client.register_script(TAKE)

    async def take(self, key: str, rate: float, burst: int, want: int) -> tuple[int, float]:
        try:
            async with asyncio.timeout(self.timeout * 2):
                granted, wait_ms = await self._take(keys=[self.prefix + key], args=[repr(rate), burst, want])
        except (RedisError, OSError, TimeoutError) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise BucketsUnavailable(reason) from None
        return int(granted), int(wait_ms) / 1000.0

    async def close(self) -> None:
        await self.client.aclose()
