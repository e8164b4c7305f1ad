"""Outbound routing: which service a call is for, from :authority or else the gRPC service name.

A client names the destination in :authority (grpcurl -authority users, or the channel's default
authority). When the authority is just the address the client dialled (an IP, localhost, or
nothing), the gRPC service in :path is looked up among the services the registry knows.
"""

from __future__ import annotations

from collections.abc import Mapping

from sidecar.call import CallHead, Handler, Target
from sidecar.config import ServiceEntry
from sidecar.errors import NoRoute


def _host(authority: str) -> str:
    if authority.startswith("["):
        return authority[1 : authority.find("]")]
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


def _is_address(host: str) -> bool:
    return not host or host == "localhost" or ":" in host or all(p.isdigit() for p in host.split("."))


_CACHE_LIMIT = 1024


class Router:
    """Resolves `head.service`; an unknown destination fails with UNAVAILABLE naming it.

    Built once per snapshot: the gRPC-service index is computed here, and what each :authority
    resolves to is remembered, so a call costs a dict lookup. A gRPC service served by several
    services is not routed by :path (the caller must name the service in :authority).
    """

    def __init__(self, inner: Handler, services: Mapping[str, ServiceEntry]) -> None:
        self.inner = inner
        self.services = services
        owners: dict[str, set[str]] = {}
        for entry in services.values():
            for grpc_service in entry.grpc_services:
                owners.setdefault(grpc_service, set()).add(entry.name)
        self.by_grpc_service = {g: next(iter(names)) for g, names in owners.items() if len(names) == 1}
        self.ambiguous = {g: sorted(names) for g, names in owners.items() if len(names) > 1}
        self._by_authority: dict[str, str | None] = {}  # None: an address, route by :path

    def __call__(self, head: CallHead) -> Target:
        authority = head.authority
        try:
            service = self._by_authority[authority]
        except KeyError:
            service = self._resolve_authority(authority)
            if len(self._by_authority) < _CACHE_LIMIT:
                self._by_authority[authority] = service
        if service is None:
            service = self._resolve_path(head.grpc_service)
        head.service = service
        return self.inner(head)

    def _resolve_authority(self, authority: str) -> str | None:
        host = _host(authority)
        if host in self.services:
            return host
        if _is_address(host):
            return None
        short = host.split(".", 1)[0]  # users.default.svc.cluster.local → users
        if short not in self.services:
            raise NoRoute(f"no route to service '{host}'")
        return short

    def _resolve_path(self, grpc_service: str) -> str:
        service = self.by_grpc_service.get(grpc_service)
        if service is not None:
            return service
        owners = self.ambiguous.get(grpc_service)
        if owners is not None:
            raise NoRoute(
                f"grpc service '{grpc_service}' is served by several services ({', '.join(owners)}): "
                "name the service in :authority"
            )
        raise NoRoute(f"no route to grpc service '{grpc_service}' (no service registers it)")
