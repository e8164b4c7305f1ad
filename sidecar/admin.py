"""The sidecar's admin HTTP port: a running proxy explains itself."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from sidecar.stats import Stats


def build_admin_app(
    *, is_ready: Callable[[], bool], config_dump: Callable[[], dict[str, object]], stats: Stats
) -> web.Application:
    async def ready(_: web.Request) -> web.Response:
        if is_ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def dump(_: web.Request) -> web.Response:
        return web.json_response(config_dump())

    async def stats_json(_: web.Request) -> web.Response:
        return web.json_response(stats.as_json())

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_get("/config_dump", dump)
    app.router.add_get("/stats", stats_json)
    return app
