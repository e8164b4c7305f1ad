"""The terminal handlers of the chains: pick an endpoint of the destination and its pool."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping

from sidecar.call import CallHead, Target
from sidecar.config import Address, ServiceEntry
from sidecar.errors import NoRoute
from sidecar.pool import Pools, UpstreamPool


class RemoteEndpoints:
    """Outbound terminal: round robin over the destination's endpoints, over mutual TLS."""

    def __init__(self, services: Mapping[str, ServiceEntry], pools: Pools) -> None:
        self._cycles: dict[str, Iterator[UpstreamPool]] = {}
        self._services = services
        self._pools = pools

    def __call__(self, head: CallHead) -> Target:
        cycle = self._cycles.get(head.service)
        if cycle is None:
            entry = self._services.get(head.service)
            if entry is None or not entry.endpoints:
                raise NoRoute(f"no endpoints for service '{head.service}'")
            pools = [self._pools.get(ep.address, secure=True) for ep in entry.endpoints]
            cycle = self._cycles[head.service] = itertools.cycle(pools)
        return Target(head.service, next(cycle), head.service.encode(), b"https")


class LocalApp:
    """Inbound terminal: every call goes to the local app, in plaintext on loopback."""

    def __init__(self, service: str, app: Address, pools: Pools) -> None:
        self._target = Target(service, pools.get(app, secure=False), b"", b"http")

    def __call__(self, head: CallHead) -> Target:
        return self._target
