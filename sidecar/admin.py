"""The sidecar's admin HTTP port: a running proxy explains itself (/ready, /config_dump, /stats,
/clusters, /certs, and /metrics in the Prometheus text format). `AdminViews` builds what each
endpoint shows; the gRPC admin service (sidecar.admin_grpc) serves the same views."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True, slots=True)
class AdminViews:
    """What the admin endpoints show, each built when asked (HTTP and gRPC share these)."""

    is_ready: Callable[[], bool]
    config_dump: Callable[[], dict[str, object]]
    stats: Callable[[], dict[str, object]]
    metrics: Callable[[], tuple[bytes, str]] | None = None  # Prometheus text and its content type
    clusters: Callable[[], list[dict[str, object]]] | None = None
    destinations: Callable[[], list[dict[str, object]]] | None = None
    certs: Callable[[], dict[str, object]] | None = None  # None: no TLS, so no certificates

    def clusters_view(self) -> dict[str, list[dict[str, object]]]:
        """clusters: every upstream pool (an endpoint), with the clusters that have ejected it;
        destinations: each cluster with resilience settings (breaker, overflows, outlier state)."""
        return {
            "clusters": self.clusters() if self.clusters is not None else [],
            "destinations": self.destinations() if self.destinations is not None else [],
        }


NO_CERTS = "no certificates configured (no tls)"


def build_admin_app(views: AdminViews) -> web.Application:
    async def ready(_: web.Request) -> web.Response:
        if views.is_ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def dump(_: web.Request) -> web.Response:
        return web.json_response(views.config_dump())

    async def stats_json(_: web.Request) -> web.Response:
        return web.json_response(views.stats())

    async def prometheus(_: web.Request) -> web.Response:
        assert views.metrics is not None
        body, content_type = views.metrics()
        # aiohttp wants the charset apart from the media type
        media_type, _sep, params = content_type.partition(";")
        charset = params.partition("charset=")[2].strip() or None
        return web.Response(body=body, content_type=media_type.strip(), charset=charset)

    async def clusters_json(_: web.Request) -> web.Response:
        return web.json_response(views.clusters_view())

    async def certs_json(_: web.Request) -> web.Response:
        if views.certs is None:
            return web.json_response({"error": NO_CERTS}, status=404)
        return web.json_response(views.certs())

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_get("/config_dump", dump)
    app.router.add_get("/stats", stats_json)
    app.router.add_get("/clusters", clusters_json)
    app.router.add_get("/certs", certs_json)
    if views.metrics is not None:
        app.router.add_get("/metrics", prometheus)
    return app
