"""The inbound and outbound filter chains, built once per config snapshot.

Reading each builder top to bottom is reading the request path. A filter wraps the next
handler (`Filter(inner, ...)`); the last handler picks the upstream.
"""

from __future__ import annotations

import random

from sidecar.authz import NO_AUTHZ, Authz
from sidecar.balancer import Balancer
from sidecar.call import Handler
from sidecar.clusters import ClusterStates
from sidecar.config import SidecarConfig
from sidecar.filters.authorization import Authorization, AuthorizationConfig
from sidecar.filters.rate_limit import RateLimit, RateLimitConfig
from sidecar.filters.request_authentication import RequestAuthentication, RequestAuthenticationConfig
from sidecar.filters.router import Router
from sidecar.filters.routes import Routes, RoutesConfig
from sidecar.jwks import JwksStore
from sidecar.jwt_authn import NO_JWT_AUTHN, JwtAuthn
from sidecar.pool import Pools
from sidecar.ratelimit import NO_LIMITS, RateLimiter, RateLimits
from sidecar.stats import Stats
from sidecar.traffic import NO_TRAFFIC, Traffic
from sidecar.upstreams import LocalApp, RemoteEndpoints


def build_outbound(
    config: SidecarConfig,
    pools: Pools,
    traffic: Traffic = NO_TRAFFIC,
    rand: random.Random | None = None,
    clusters: ClusterStates | None = None,
    stats: Stats | None = None,
) -> Handler:
    handler: Handler
    if traffic is NO_TRAFFIC:  # no policies: round robin over each service's endpoints
        handler = RemoteEndpoints(config.services, pools)
    else:
        rand = rand if rand is not None else random.Random()
        handler = Balancer(traffic, pools, rand, clusters)
        handler = Routes(handler, RoutesConfig(traffic, rand, stats if stats is not None else Stats()))
    handler = Router(handler, config.services)
    return handler


def build_inbound(
    config: SidecarConfig,
    pools: Pools,
    authz: Authz = NO_AUTHZ,
    stats: Stats | None = None,
    limits: RateLimits = NO_LIMITS,
    limiter: RateLimiter | None = None,
    jwt: JwtAuthn = NO_JWT_AUTHN,
    jwks: JwksStore | None = None,
) -> Handler:
    assert config.app is not None
    stats = stats if stats is not None else Stats()
    handler: Handler = LocalApp(config.service, config.app, pools)
    if not limits.empty:  # no RateLimitPolicy: no limit
        if limiter is None:
            limiter = RateLimiter(stats)
        handler = RateLimit(handler, RateLimitConfig(limits, limiter))
    if not authz.empty:  # no AuthorizationPolicy: every caller the listener let in
        handler = Authorization(handler, AuthorizationConfig(authz, stats))
    if not jwt.empty:  # no RequestAuthentication: tokens are not looked at
        jwks = jwks if jwks is not None else JwksStore()
        handler = RequestAuthentication(handler, RequestAuthenticationConfig(jwt, jwks, stats))
    return handler
