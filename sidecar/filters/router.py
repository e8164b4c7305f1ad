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


class Router:
    """Resolves `head.service`; an unknown destination fails with UNAVAILABLE naming it."""

    def __init__(self, inner: Handler, services: Mapping[str, ServiceEntry]) -> None:
        self.inner = inner
        self.services = services
        self.by_grpc_service = {g: s.name for s in services.values() for g in s.grpc_services}

    def __call__(self, head: CallHead) -> Target:
        host = _host(head.authority)
        if host in self.services:
            head.service = host
        elif not _is_address(host):
            short = host.split(".", 1)[0]  # users.default.svc.cluster.local → users
            if short not in self.services:
                raise NoRoute(f"no route to service '{host}'")
            head.service = short
        else:
            grpc_service = head.grpc_service
            service = self.by_grpc_service.get(grpc_service)
            if service is None:
                raise NoRoute(f"no route to grpc service '{grpc_service}' (no service registers it)")
            head.service = service
        return self.inner(head)
