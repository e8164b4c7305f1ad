"""Authorization: the inbound chain's first filter, enforcing the pushed AuthorizationPolicies.

A denied call raises PermissionDenied (PERMISSION_DENIED) with a message naming the policy
(`RBAC: denied by AuthorizationPolicy default/deny-orders`, or `RBAC: denied: no ALLOW policy
matched (AuthorizationPolicy default/allow-orders)`); it is never forwarded to the app, and is
counted as `inbound.authz_denied`. The decision is `sidecar.authz.Authz.check`, compiled per
snapshot; per call: the caller's SPIFFE ID parsed (cached per peer), the policies' matchers.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.authz import Authz, Peer, peer_of
from sidecar.call import CallHead, Handler, Target
from sidecar.errors import PermissionDenied
from sidecar.stats import Stats

_PEER_CACHE_LIMIT = 1024


@dataclass(frozen=True, slots=True)
class AuthorizationConfig:
    authz: Authz
    stats: Stats


class Authorization:
    def __init__(self, inner: Handler, config: AuthorizationConfig) -> None:
        self.inner = inner
        self.authz = config.authz
        self.stats = config.stats
        self._peers: dict[str | None, Peer] = {}

    def __call__(self, head: CallHead) -> Target:
        peer = self._peers.get(head.peer)
        if peer is None:
            if len(self._peers) >= _PEER_CACHE_LIMIT:
                self._peers.clear()
            peer = self._peers[head.peer] = peer_of(head.peer)
        denied = self.authz.check(head, peer)
        if denied is not None:
            self.stats.incr("inbound.authz_denied")
            raise PermissionDenied(denied)
        return self.inner(head)
