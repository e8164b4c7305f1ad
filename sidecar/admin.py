"""The sidecar's admin HTTP port: a running proxy explains itself (/ready, /config_dump, /stats,
and /metrics in the Prometheus text format)."""

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

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_get("/config_dump", dump)
    app.router.add_get("/stats", stats_json)
    if metrics is not None:
        app.router.add_get("/metrics", prometheus)
    return app
