"""The lifecycle every example service shares.

Bind, serve health and reflection beside the app's services, announce the bound address in a
ready file, and stop gracefully on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.identity import Instance

log = logging.getLogger(__name__)

# Registers the app's servicers on the server and returns the full names of the gRPC services added.
Register = Callable[[Any], Sequence[str]]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen", default="127.0.0.1:0", help="host:port to serve on; port 0 picks a free port"
    )
    parser.add_argument("--version", default="v1", help="version label reported in replies (default v1)")
    parser.add_argument("--instance", default="", help="instance id (default: SERVICE-VERSION-PID)")
    parser.add_argument(
        "--ready-file",
        type=Path,
        help='once serving, write {"address": "HOST:PORT", "pid": N} here (atomically)',
    )
    parser.add_argument(
        "--grace", type=float, default=2.0, help="seconds in-flight calls get on shutdown (default 2)"
    )


def instance_from_args(service: str, args: argparse.Namespace) -> Instance:
    version: str = args.version
    return Instance(service, version, args.instance or f"{service}-{version}-{os.getpid()}")


def write_ready_file(path: Path, address: str) -> None:
    """Write the ready file so that a reader sees either nothing or the whole document."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"address": address, "pid": os.getpid()}) + "\n")
    os.replace(temporary, path)


def bound_address(listen: str, port: int) -> str:
    host = listen.rpartition(":")[0]
    return f"{host}:{port}"


class BindError(Exception):
    """The server could not listen on the requested address."""


@dataclass(frozen=True)
class Started:
    """A running server, its health servicer and the address it bound."""

    server: Any
    health: Any
    address: str


async def start_server(register: Register, listen: str) -> Started:
    """Start a grpc.aio server on listen with the app's services, health checking and reflection."""
    # Without SO_REUSEPORT a second instance on a taken port fails instead of silently sharing it.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    app_services = list(register(server))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in app_services:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([*app_services, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as error:
        await server.stop(None)
        raise BindError(f"cannot listen on {listen}: {error}") from None
    await server.start()
    return Started(server, health_servicer, bound_address(listen, port))


async def serve(
    *,
    instance: Instance,
    listen: str,
    register: Register,
    ready_file: Path | None,
    grace: float,
    stopping: asyncio.Event | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT (or `stopping` is set), then stop gracefully; returns the exit code."""
    try:
        started = await start_server(register, listen)
    except BindError as error:
        log.error("%s", error)
        return 2
    stopping = stopping or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        if ready_file is not None:
            write_ready_file(ready_file, started.address)
        log.info(
            "%s %s (%s) serving on %s", instance.service, instance.version, instance.instance, started.address
        )
        await stopping.wait()
        log.info("%s: stopping (grace %.1fs)", instance.instance, grace)
        # Health checkers see NOT_SERVING while in-flight calls finish.
        await started.health.enter_graceful_shutdown()
        await started.server.stop(grace)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
