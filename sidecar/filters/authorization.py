"""Authorization: the inbound chain's first filter, enforcing the pushed AuthorizationPolicies.

A denied call raises PermissionDenied (PERMISSION_DENIED) with a message naming the policy
(`RBAC: denied by AuthorizationPolicy default/deny-orders`, or `RBAC: denied: no ALLOW policy
matched (AuthorizationPolicy default/allow-orders)`); it is never forwarded to the app, and is
counted as `inbound.authz_denied`. The decision is `sidecar.authz.Authz.check`, compiled per
snapshot. Decisions are cached per snapshot by everything the policies read of a call
(`Authz.key`: caller, method, and the header values and validated JWT when rules read them), so
steady traffic costs a tuple and a dict lookup per call; a new (caller, method) pair runs the
matchers once. The cache is bounded (cleared when full).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from sidecar.authz import Authz, Peer, peer_of
from sidecar.call import CallHead, Handler, Target
from sidecar.errors import PermissionDenied
from sidecar.stats import Stats

_PEER_CACHE_LIMIT = 1024
_DECISION_CACHE_LIMIT = 4096
_UNDECIDED = object()


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
        self._decisions: dict[Hashable, str | None] = {}

    def __call__(self, head: CallHead) -> Target:
        key = self.authz.key(head)
        denied = self._decisions.get(key, _UNDECIDED)
        if denied is _UNDECIDED:
            denied = self._decide(head)
            if len(self._decisions) >= _DECISION_CACHE_LIMIT:
                self._decisions.clear()
            self._decisions[key] = denied
        if denied is not None:
            self.stats.incr("inbound.authz_denied")
            raise PermissionDenied(str(denied))
        return self.inner(head)

    def _decide(self, head: CallHead) -> str | None:
        peer = self._peers.get(head.peer)
        if peer is None:
            if len(self._peers) >= _PEER_CACHE_LIMIT:
                self._peers.clear()
            peer = self._peers[head.peer] = peer_of(head.peer)
        return self.authz.check(head, peer)
