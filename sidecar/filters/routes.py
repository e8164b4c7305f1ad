"""Routes: the VirtualService route of a call, and its weighted pick among the route's destinations.

After the Router has named the destination service, the first http[] route of the service's
VirtualService that matches the call picks a destination (service, subset) by weight; the
terminal balancer then picks an endpoint of that cluster. A service without a VirtualService
keeps every endpoint (`subset` None). A VirtualService none of whose routes match is UNAVAILABLE
naming the service and the path (`NoRoute`).

Everything is compiled per snapshot (`sidecar.traffic`); per call this is a dict lookup, the
matchers of the routes tried, and one random number when a route splits traffic.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from dataclasses import dataclass, field

from sidecar.call import CallHead, Handler, Target
from sidecar.errors import FaultAbort, MeshError, NoRoute
from sidecar.stats import Stats
from sidecar.traffic import Mirror, Route, Traffic


@dataclass(frozen=True, slots=True)
class RoutesConfig:
    traffic: Traffic
    rand: random.Random
    stats: Stats = field(default_factory=Stats)


def metadata(head: CallHead) -> dict[bytes, str]:
    """The call's metadata by key, several values of one key joined with ',' (gRFC A28)."""
    values: dict[bytes, str] = {}
    for name, value, _ in head.headers:
        text = value.decode("latin-1")
        values[name] = f"{values[name]},{text}" if name in values else text
    return values


def first_match(routes: tuple[Route, ...], head: CallHead, needs_headers: bool) -> Route | None:
    headers = metadata(head) if needs_headers else {}
    path = head.path
    for route in routes:
        if not route.blocks:
            return route
        for block in route.blocks:
            if block.uri is not None and not block.uri(path):
                continue
            for condition in block.headers:
                value = headers.get(condition.name)
                if value is None or not condition.matches(value):
                    break
            else:
                return route
    return None


class Routes:
    """Sets `head.service` and `head.subset` to the destination the matching route picks, and
    what else the route asks: its policy (timeout, retries), an injected fault, a mirror."""

    def __init__(self, inner: Handler, config: RoutesConfig) -> None:
        self.inner = inner
        self.routes = config.traffic.routes
        self.needs_headers = config.traffic.needs_headers
        self.random = config.rand.random
        self.stats = config.stats

    def __call__(self, head: CallHead) -> Target:
        routes = self.routes.get(head.service)
        if routes is None:
            return self.inner(head)
        route = first_match(routes, head, self.needs_headers)
        if route is None:
            raise NoRoute(f"no route for service '{head.service}' and path '{head.path}'")
        policy = route.policy
        if policy is not None:
            fault = policy.fault
            if fault is not None:
                # An abort is immediate (no delay first); docs/traffic.md.
                if fault.abort_fraction and self.random() < fault.abort_fraction:
                    self.stats.incr("outbound.fault_aborted")
                    raise FaultAbort(fault.abort_code)
                if fault.delay_fraction and self.random() < fault.delay_fraction:
                    self.stats.incr("outbound.fault_delayed")
                    head.delay = fault.delay
        destinations = route.destinations
        if len(destinations) == 1:
            head.service, head.subset = destinations[0]
        else:
            pick = bisect_right(route.cumulative, self.random() * route.total)
            head.service, head.subset = destinations[pick]
        target = self.inner(head)
        if policy is not None:
            head.policy = policy
            head.repick = self.inner
            mirror = policy.mirror
            if mirror is not None and (mirror.fraction >= 1.0 or self.random() < mirror.fraction):
                head.mirror = self._mirror_target(head, mirror)
        return target

    def _mirror_target(self, head: CallHead, mirror: Mirror) -> Target | None:
        copy = CallHead(head.path, head.authority, head.headers, head.peer, head.deadline)
        copy.service, copy.subset = mirror.service, mirror.subset
        try:
            return self.inner(copy)
        except MeshError:
            self.stats.incr("outbound.mirror_no_endpoint")
            return None
