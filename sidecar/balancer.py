"""The outbound terminal when traffic policy exists: an endpoint of the call's cluster, per the
cluster's load-balancing policy (DestinationRule `trafficPolicy.loadBalancer`), among the
endpoints outlier detection has not ejected and health checks have not found unhealthy, once
the cluster's breaker and connection-pool limits admit the call (`Guarded`, for clusters with
such settings).

Pickers are built once per snapshot with their Targets: round robin is a `next`, random one
random number, least request two random numbers and two in-flight counts (the pools' open and
waiting streams, so the count is shared by every snapshot and cluster using an endpoint), and
ring hash one hash of the header value and a bisect over a ring built here.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from bisect import bisect_left
from collections.abc import Callable

from sidecar.call import CallHead, Target
from sidecar.clusters import ClusterState, ClusterStates
from sidecar.errors import NoRoute
from sidecar.pool import Pools
from sidecar.traffic import Cluster, Traffic

MAX_RING_SIZE = 65536  # points; minimumRingSize above this is capped

Picker = Callable[[CallHead], Target]


def ring_hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class RoundRobin:
    def __init__(self, targets: list[Target]) -> None:
        self._next = itertools.cycle(targets).__next__

    def __call__(self, head: CallHead) -> Target:
        return self._next()


class Random:
    def __init__(self, targets: list[Target], rand: random.Random) -> None:
        self.targets = targets
        self._random = rand.random

    def __call__(self, head: CallHead) -> Target:
        return self.targets[int(self._random() * len(self.targets))]


class LeastRequest:
    """Power of two choices: of two endpoints drawn at random, the one with fewer calls in flight."""

    def __init__(self, targets: list[Target], rand: random.Random) -> None:
        self.targets = targets
        self._random = rand.random

    def __call__(self, head: CallHead) -> Target:
        targets = self.targets
        n = len(targets)
        if n == 1:
            return targets[0]
        i = int(self._random() * n)
        j = int(self._random() * (n - 1))
        if j >= i:
            j += 1
        a, b = targets[i], targets[j]
        return b if b.pool.in_flight() < a.pool.in_flight() else a


class RingHash:
    """Consistent hashing on one metadata value: each endpoint owns points on a ring placed by its
    address (hashes of "address_k"), so an endpoint leaving moves only the keys it owned. A call
    without the header gets a random point (gRFC A42)."""

    def __init__(
        self, targets: list[Target], addresses: list[str], header: bytes, size: int, rand: random.Random
    ) -> None:
        # Points per endpoint: the ring's share rounded up to a power of two, so the count (and so
        # every other endpoint's points) stays the same when one endpoint comes or goes, except
        # when the count of endpoints crosses a power of two.
        per = 1 << (-(-min(size, MAX_RING_SIZE) // len(targets)) - 1).bit_length()
        points = sorted(
            (ring_hash(f"{address}_{k}".encode()), n)
            for n, address in enumerate(addresses)
            for k in range(per)
        )
        self.hashes = [h for h, _ in points]
        self.owners = [targets[n] for _, n in points]
        self.header = header
        self._random = rand.random

    def __call__(self, head: CallHead) -> Target:
        header = self.header
        value = b",".join(v for name, v, _ in head.headers if name == header)
        if value or any(name == header for name, _, _ in head.headers):
            point = ring_hash(value)
        else:
            point = int(self._random() * 2**64)
        index = bisect_left(self.hashes, point)
        return self.owners[index if index < len(self.owners) else 0]


def _build(cluster: Cluster, targets: list[Target], addresses: list[str], rand: random.Random) -> Picker:
    kind = cluster.lb.kind
    if kind == "RANDOM":
        return Random(targets, rand)
    if kind == "LEAST_REQUEST":
        return LeastRequest(targets, rand)
    if kind == "RING_HASH":
        return RingHash(targets, addresses, cluster.lb.hash_header, cluster.lb.ring_size, rand)
    return RoundRobin(targets)


class Guarded:
    """A cluster with resilience settings: the breaker and the connection-pool limits admit the
    call first, then the picker chooses among the endpoints that may take calls (not ejected).
    The picker over those is rebuilt only when that set changes."""

    def __init__(
        self,
        cluster: Cluster,
        targets: list[Target],
        addresses: list[str],
        rand: random.Random,
        state: ClusterState,
    ) -> None:
        self.cluster = cluster
        self.targets = targets
        self.addresses = addresses
        self.pools = [t.pool for t in targets]
        self.rand = rand
        self.state = state
        self._seen = -1
        self._picker: Picker | None = None

    def _rebuild(self) -> None:
        self._seen = self.state.version
        out = self.state.unavailable()
        kept = [(t, a) for t, a in zip(self.targets, self.addresses, strict=True) if a not in out]
        if not kept:
            self._picker = None
            return
        targets, addresses = (list(x) for x in zip(*kept, strict=True))
        self._picker = _build(self.cluster, targets, addresses, self.rand)

    def __call__(self, head: CallHead) -> Target:
        state = self.state
        if state.version != self._seen:
            self._rebuild()
        picker = self._picker
        if picker is None:
            cluster = self.cluster
            which = "" if cluster.subset is None else f" subset '{cluster.subset}'"
            ejected = state.ejected()
            why = [f"{len(ejected)} ejected by outlier detection"] if ejected else []
            unhealthy = state.unhealthy() - ejected
            if unhealthy:
                why.append(f"{len(unhealthy)} failing health checks")
            raise NoRoute(
                f"no endpoint of service '{cluster.service}'{which} can take calls: {', '.join(why)}"
            )
        state.admit(self.pools)
        return picker(head)


def picker_for(
    cluster: Cluster, pools: Pools, rand: random.Random, state: ClusterState | None = None
) -> Picker:
    service = cluster.service
    addresses = [str(ep.address) for ep in cluster.endpoints]
    targets = [
        Target(
            service,
            pools.get(ep.address, secure=True, identity=ep.identity),
            service.encode(),
            b"https",
            None if state is None else state.reporter(address),
            state,
        )
        for ep, address in zip(cluster.endpoints, addresses, strict=True)
    ]
    if state is None:
        return _build(cluster, targets, addresses, rand)
    return Guarded(cluster, targets, addresses, rand, state)


class Balancer:
    """Outbound terminal: an endpoint of (head.service, head.subset), over mutual TLS."""

    def __init__(
        self, traffic: Traffic, pools: Pools, rand: random.Random, states: ClusterStates | None = None
    ) -> None:
        self._pickers = {
            key: picker_for(cluster, pools, rand, None if states is None else states.get(key))
            for key, cluster in traffic.clusters.items()
            if cluster.endpoints
        }

    def __call__(self, head: CallHead) -> Target:
        picker = self._pickers.get((head.service, head.subset))
        if picker is None:
            if head.subset is None:
                raise NoRoute(f"no endpoints for service '{head.service}'")
            raise NoRoute(f"no endpoints for service '{head.service}' subset '{head.subset}'")
        return picker(head)
