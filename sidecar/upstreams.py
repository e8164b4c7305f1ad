"""The terminal handlers of the chains: pick an endpoint of the destination and its pool.

Targets are built once per snapshot, so picking one per call is a dict lookup and a `next`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping

from sidecar.call import CallHead, Target
from sidecar.config import Address, ServiceEntry
from sidecar.errors import NoRoute
from sidecar.pool import Pools


class RemoteEndpoints:
    """Outbound terminal: round robin over the destination's endpoints, over mutual TLS."""

    def __init__(self, services: Mapping[str, ServiceEntry], pools: Pools) -> None:
        self._cycles: dict[str, Iterator[Target]] = {
            name: itertools.cycle(
                [
                    Target(
                        name,
                        pools.get(ep.address, secure=True, identity=ep.identity),
                        name.encode(),
                        b"https",
                    )
                    for ep in entry.endpoints
                ]
            )
            for name, entry in services.items()
            if entry.endpoints
        }

    def __call__(self, head: CallHead) -> Target:
        cycle = self._cycles.get(head.service)
        if cycle is None:
            raise NoRoute(f"no endpoints for service '{head.service}'")
        return next(cycle)


class LocalApp:
    """Inbound terminal: every call goes to the local app, in plaintext on loopback."""

    def __init__(self, service: str, app: Address, pools: Pools) -> None:
        self._target = Target(service, pools.get(app, secure=False), b"", b"http")

    def __call__(self, head: CallHead) -> Target:
        return self._target
