"""A discovery control plane for tests: DiscoveryServicer on a grpc.aio server on loopback, in the
current event loop (`start_control_plane`) or in a thread of its own (`ThreadedControlPlane`, for
tests that drive real sidecar processes with blocking calls)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from mesh.v1 import discovery_pb2_grpc

from control_plane.discovery import DiscoveryServicer, ServerKeepalive
from control_plane.registry import Registry
from control_plane.resources import Store
from control_plane.snapshots import SnapshotBuilder

T = TypeVar("T")


@dataclass
class RunningControlPlane:
    server: Any
    servicer: DiscoveryServicer
    port: int

    @property
    def registry(self) -> Registry:
        return self.servicer.registry

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.servicer.stop()
        await self.server.stop(None)


async def start_control_plane(
    store: Store,
    *,
    port: int = 0,
    builder: SnapshotBuilder | None = None,
    grace: float = 0.5,
    debounce: float = 0.01,
    warmup: float = 0.0,
    hello_timeout: float = 10.0,
    retry_initial: float = 0.05,
    keepalive: ServerKeepalive | None = None,
) -> RunningControlPlane:
    servicer = DiscoveryServicer(
        store,
        Registry(grace=grace),
        builder=builder,
        debounce=debounce,
        warmup=warmup,
        hello_timeout=hello_timeout,
        retry_initial=retry_initial,
    )
    server = grpc.aio.server(options=keepalive.server_options() if keepalive is not None else None)
    discovery_pb2_grpc.add_DiscoveryServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    servicer.start()
    return RunningControlPlane(server, servicer, bound)


async def eventually(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.01
) -> None:
    """Poll `condition()` until true; fail naming `what` at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


class ThreadedControlPlane:
    """A control plane on an event loop in its own thread; `call` runs a coroutine function there."""

    def __init__(self, store: Store, **options: Any) -> None:
        self._store = store
        self._options = options
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="control-plane", daemon=True)
        self.running: RunningControlPlane | None = None

    def call(self, function: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
        async def run() -> T:
            return await function()

        future: Future[T] = asyncio.run_coroutine_threadsafe(run(), self._loop)
        return future.result(timeout)

    def read(self, function: Callable[[RunningControlPlane], T], timeout: float = 10.0) -> T:
        """Run a plain function over the running control plane on its loop (registry reads)."""

        async def run() -> T:
            assert self.running is not None
            return function(self.running)

        return self.call(run, timeout)

    def wait_for(self, condition: Callable[[RunningControlPlane], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not self.read(condition):
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.02)

    @contextlib.contextmanager
    def started(self) -> Iterator[RunningControlPlane]:
        self._thread.start()
        try:

            async def start() -> RunningControlPlane:
                return await start_control_plane(self._store, **self._options)

            self.running = self.call(start)
            yield self.running
        finally:
            if self.running is not None:
                self.call(self.running.stop)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
