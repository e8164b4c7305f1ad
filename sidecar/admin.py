"""The sidecar's admin HTTP port: a running proxy explains itself (/ready, /config_dump, /stats,
/clusters, /certs, and /metrics in the Prometheus text format)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from sidecar.stats import Stats


def build_admin_app(
    *,
    is_ready: Callable[[], bool],
    config_dump: Callable[[], dict[str, object]],
    stats: Stats,
    metrics: Callable[[], tuple[bytes, str]] | None = None,
    clusters: Callable[[], list[dict[str, object]]] | None = None,
    destinations: Callable[[], list[dict[str, object]]] | None = None,
    certs: Callable[[], dict[str, object]] | None = None,
) -> web.Application:
    async def ready(_: web.Request) -> web.Response:
        if is_ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def dump(_: web.Request) -> web.Response:
        return web.json_response(config_dump())

    async def stats_json(_: web.Request) -> web.Response:
        return web.json_response(stats.as_json())

    async def prometheus(_: web.Request) -> web.Response:
        assert metrics is not None
        body, content_type = metrics()
        # aiohttp wants the charset apart from the media type
        media_type, _sep, params = content_type.partition(";")
        charset = params.partition("charset=")[2].strip() or None
        return web.Response(body=body, content_type=media_type.strip(), charset=charset)

    async def clusters_json(_: web.Request) -> web.Response:
        # clusters: every upstream pool (an endpoint), with the clusters that have ejected it;
        # destinations: each cluster with resilience settings (breaker, overflows, outlier state).
        return web.json_response(
            {
                "clusters": clusters() if clusters is not None else [],
                "destinations": destinations() if destinations is not None else [],
            }
        )

    async def certs_json(_: web.Request) -> web.Response:
        if certs is None:
            return web.json_response({"error": "no certificates configured (no tls)"}, status=404)
        return web.json_response(certs())

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_get("/config_dump", dump)
    app.router.add_get("/stats", stats_json)
    app.router.add_get("/clusters", clusters_json)
    app.router.add_get("/certs", certs_json)
    if metrics is not None:
        app.router.add_get("/metrics", prometheus)
    return app
