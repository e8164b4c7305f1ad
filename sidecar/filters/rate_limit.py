"""RateLimit: the inbound chain's rate limits, enforcing the pushed RateLimitPolicies.

Every rule whose match holds for the call takes a token from its bucket (`sidecar.ratelimit`),
in order; the first refusal refuses the call — RESOURCE_EXHAUSTED naming the policy and the rule
(`rate limited by RateLimitPolicy default/users-limits, rule creates (20 per 1s, burst 40)`), or
UNAVAILABLE for a GLOBAL rule failing closed while Redis is unreachable — and it never reaches
the app. Tokens already taken by earlier rules are not given back. Placed after Authorization,
so callers refused there spend no tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from sidecar.authz import NO_PEER, peer_of
from sidecar.call import CallHead, Handler, Target
from sidecar.ratelimit import RateLimiter, RateLimits

_cached_peer = lru_cache(maxsize=1024)(peer_of)


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    limits: RateLimits
    limiter: RateLimiter  # the sidecar's: its buckets outlive this snapshot


class RateLimit:
    def __init__(self, inner: Handler, config: RateLimitConfig) -> None:
        self.inner = inner
        self.rules = config.limits.rules
        self.needs_peer = config.limits.needs_peer
        self.check = config.limiter.check

    def __call__(self, head: CallHead) -> Target:
        peer = _cached_peer(head.peer) if self.needs_peer else NO_PEER
        path = head.path
        for rule in self.rules:
            if not rule.matches(path, peer):
                continue
            if rule.key == "RULE":
                key = ""
            elif rule.key == "METHOD":
                key = path
            else:
                key = head.peer or ""
            refused = self.check(rule, key)
            if refused is not None:
                raise refused
        return self.inner(head)
