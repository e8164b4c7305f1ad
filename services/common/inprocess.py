"""Serve services on a loopback port inside the current event loop and hand back a channel to them.

For tests, and for tools that need a real gRPC peer without starting a process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from services.common.server import Register, start_server


@asynccontextmanager
async def channel_for(register: Register) -> AsyncIterator[Any]:
    """Yield a grpc.aio channel to a server (with health and reflection) running register's services."""
    started = await start_server(register, "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(started.address) as channel:
            yield channel
    finally:
        await started.server.stop(None)
