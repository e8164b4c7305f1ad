"""Routes: the VirtualService route of a call, and its weighted pick among the route's destinations.

After the Router has named the destination service, the first http[] route of the service's
VirtualService that matches the call picks a destination (service, subset) by weight; the
terminal balancer then picks an endpoint of that cluster. A service without a VirtualService
keeps every endpoint (`subset` None). A VirtualService none of whose routes match is UNAVAILABLE
naming the service and the path (`NoRoute`).

Everything is compiled per snapshot (`sidecar.traffic`); per call this is a pass over the
call's metadata for the keys routes match on, a dict lookup of the remembered decision (else the
matchers of the routes tried), and one random number when a route splits traffic.
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


def first_match_in(routes: tuple[Route, ...], path: str, headers: dict[bytes, str]) -> Route | None:
    """The first route matching `path` and `headers` (values by key, several joined with ',')."""
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


_MEMO_LIMIT = 4096  # remembered route decisions per snapshot; cleared when full


class Routes:
    """Sets `head.service` and `head.subset` to the destination the matching route picks, and
    what else the route asks: its policy (timeout, retries), an injected fault, a mirror.

    Which route matches depends only on the service, the path and the values of the metadata
    keys some route's conditions name, so the decision is remembered under those (bounded):
    a repeated call shape costs one pass over its metadata and a dict lookup, whatever the
    number of routes."""

    def __init__(self, inner: Handler, config: RoutesConfig) -> None:
        self.inner = inner
        self.routes = config.traffic.routes
        self.random = config.rand.random
        self.stats = config.stats
        names = {
            condition.name
            for routes in self.routes.values()
            for route in routes
            for block in route.blocks
            for condition in block.headers
        }
        self.header_names = frozenset(names)
        self.header_order = tuple(sorted(names))
        self._memo: dict[tuple[object, ...], Route | None] = {}

    def _match(self, routes: tuple[Route, ...], head: CallHead) -> Route | None:
        names = self.header_names
        if not names:
            key: tuple[object, ...] = (head.service, head.path)
            values: dict[bytes, str] = {}
        else:
            values = {}
            for name, value, _ in head.headers:
                if name in names:
                    text = value.decode("latin-1")
                    values[name] = f"{values[name]},{text}" if name in values else text
            key = (head.service, head.path, *(values.get(name) for name in self.header_order))
        memo = self._memo
        try:
            return memo[key]
        except KeyError:
            pass
        route = first_match_in(routes, head.path, values)
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        memo[key] = route
        return route

    def __call__(self, head: CallHead) -> Target:
        routes = self.routes.get(head.service)
        if routes is None:
            return self.inner(head)
        route = self._match(routes, head)
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
