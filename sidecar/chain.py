"""The inbound and outbound filter chains, built once per config snapshot.

Reading each builder top to bottom is reading the request path. A filter wraps the next
handler (`Filter(inner, ...)`); the last handler picks the upstream.
"""

from __future__ import annotations

from sidecar.call import Handler
from sidecar.config import SidecarConfig
from sidecar.filters.router import Router
from sidecar.pool import Pools
from sidecar.upstreams import LocalApp, RemoteEndpoints


def build_outbound(config: SidecarConfig, pools: Pools) -> Handler:
    handler: Handler = RemoteEndpoints(config.services, pools)
    handler = Router(handler, config.services)
    return handler


def build_inbound(config: SidecarConfig, pools: Pools) -> Handler:
    assert config.app is not None
    handler: Handler = LocalApp(config.service, config.app, pools)
    return handler
