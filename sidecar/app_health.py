"""Watch the local app's health (grpc.health.v1 Watch) and report every change.

With a control plane, an instance whose app is not serving is no endpoint: the sidecar reports
the app's health over its discovery stream, and the other sidecars stop sending it calls. The
watch is on the overall server health (service ""). An app that is down or unreachable counts as
not serving; an app without the health service (UNIMPLEMENTED) counts as serving, and is not
asked again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.config import Address
from sidecar.discovery import Backoff
from sidecar.tasks import cancel_all

log = logging.getLogger(__name__)


class AppHealthWatcher:
    def __init__(
        self,
        app: Address,
        report: Callable[[bool], None],
        *,
        service: str = "",
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.app = app
        self._report = report
        self.service = service
        self.backoff = backoff if backoff is not None else Backoff()
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self.serving: bool | None = None  # None until the first answer

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="app-health")

    async def stop(self) -> None:
        await cancel_all([self._task])

    def _set(self, serving: bool) -> None:
        if serving != self.serving:
            log.info("local app at %s is %s", self.app, "serving" if serving else "not serving")
            self.serving = serving
            self._report(serving)

    async def run(self) -> None:
        request = health_pb2.HealthCheckRequest(service=self.service)
        while True:
            try:
                async with grpc.aio.insecure_channel(str(self.app)) as channel:
                    watch = health_pb2_grpc.HealthStub(channel).Watch(request)
                    async for response in watch:
                        self._set(response.status == health_pb2.HealthCheckResponse.SERVING)
                        self.backoff.reset()
                self._set(False)  # the app ended the watch: it is shutting down
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    log.info("local app at %s has no grpc.health.v1; taken as serving", self.app)
                    self._set(True)
                    return
                self._set(False)
            await self._sleep(self.backoff.next())
