"""What filters see of a call: its request head, decided once when the request headers arrive."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sidecar.h2.hpack_codec import Header

if TYPE_CHECKING:
    from sidecar.clusters import ClusterState
    from sidecar.jwt_authn import RequestAuth
    from sidecar.pool import UpstreamPool
    from sidecar.traffic import RoutePolicy


@dataclass(slots=True)
class CallHead:
    """One call's request head. Filters may narrow `service`; the relay owns the rest."""

    path: str  # the gRPC :path, "/pkg.Service/Method"
    authority: str
    headers: tuple[Header, ...]  # request metadata, hop-by-hop headers removed; filters replace, not mutate
    peer: str | None  # the caller's SPIFFE ID (inbound, verified by mTLS), else None
    deadline: float | None  # absolute, on the sidecar's clock
    service: str = ""  # the destination service, once a filter has resolved it
    subset: str | None = None  # its DestinationRule subset, when a route names one
    auth: RequestAuth | None = None  # the caller's validated JWT (inbound, RequestAuthentication)
    attributes: dict[str, object] = field(default_factory=dict)
    # Set by the Routes filter from the matching route:
    policy: RoutePolicy | None = None  # timeout, retries
    delay: float = 0.0  # an injected fault delay, seconds
    mirror: Target | None = None  # where a copy of this call goes
    repick: Handler | None = None  # picks another endpoint of the same cluster (retries)

    @property
    def grpc_service(self) -> str:
        return self.path[1:].rpartition("/")[0]


@dataclass(frozen=True, slots=True)
class Target:
    """Where a call goes: the pool of an endpoint, and how to address it there."""

    service: str
    pool: UpstreamPool
    authority: bytes
    scheme: bytes
    # Told the gRPC status of each attempt made on this target (outlier detection, breakers).
    report: Callable[[int], None] | None = None
    # The destination cluster's resilience state, when its DestinationRule has any (maxRetries).
    cluster: ClusterState | None = None


Handler = Callable[[CallHead], Target]
