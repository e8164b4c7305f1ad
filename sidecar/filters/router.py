"""Outbound routing: which service a call is for, from :authority or else the gRPC service name."""

from __future__ import annotations

from collections.abc import Mapping

from sidecar.call import CallHead, Handler, Target
from sidecar.config import ServiceEntry
from sidecar.errors import NoRoute


def _host(authority: str) -> str:
    if authority.startswith("["):
        return authority[1 : authority.find("]")]
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


class Router:
    """Resolves `head.service`; unknown destinations fail with UNAVAILABLE naming the service."""

    def __init__(self, inner: Handler, services: Mapping[str, ServiceEntry]) -> None:
        self.inner = inner
        self.services = services
        self.by_grpc_service = {g: s.name for s in services.values() for g in s.grpc_services}

    def __call__(self, head: CallHead) -> Target:
        host = _host(head.authority)
        if host in self.services:
            head.service = host
        else:
            short = host.split(".", 1)[0]
            if short in self.services and not short.isdigit():
                head.service = short
            else:
                grpc_service = head.grpc_service
                service = self.by_grpc_service.get(grpc_service)
                if service is None:
                    raise NoRoute(self._no_route_message(host, grpc_service))
                head.service = service
        return self.inner(head)

    @staticmethod
    def _no_route_message(host: str, grpc_service: str) -> str:
        if host and not _looks_like_address(host):
            return f"no route to service '{host}' (grpc service '{grpc_service}')"
        return f"no route to grpc service '{grpc_service}'"


def _looks_like_address(host: str) -> bool:
    return host == "localhost" or all(part.isdigit() for part in host.split(".")) or ":" in host
