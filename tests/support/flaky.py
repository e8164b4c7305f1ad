"""In-process retry harness: upstreams that fail as a test scripts them, behind one real sidecar.

`flaky_mesh(root, policies, endpoints=N)` starts N gRPC servers (real mutual TLS, certificates
from a fresh CA) serving `/test.Flaky/Call` and a client `Sidecar` (in this event loop) whose
only destination service, `flaky`, has those servers as endpoints and whose snapshot carries the
given policies. Each call the servers receive asks the script what to do:

- `Ok()` replies with the request body;
- `Fail(code, pushback=None)` ends before any message (Trailers-Only), with
  `grpc-retry-pushback-ms` in the trailers when given;
- `FailAfterMessage(code)` sends one message, then fails (the call is committed);
- `Sleep(seconds)` then replies.

`Seen` records what the servers saw (time, endpoint port, request metadata) so tests can count
attempts, check `grpc-previous-rpc-attempts` and the gaps between attempts.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from control_plane.ca import CertificateAuthority, issue_workload_files
from control_plane.spiffe import SpiffeId
from sidecar.app import Sidecar
from sidecar.config import Address, Endpoint, Policy, ServiceEntry, parse_config
from sidecar.discovery import Discovered
from sidecar.traffic import compile_traffic

METHOD = "/test.Flaky/Call"


@dataclass(frozen=True)
class Ok:
    pass


@dataclass(frozen=True)
class Fail:
    code: grpc.StatusCode
    pushback: str | None = None


@dataclass(frozen=True)
class FailAfterMessage:
    code: grpc.StatusCode


@dataclass(frozen=True)
class Sleep:
    seconds: float


Action = Ok | Fail | FailAfterMessage | Sleep


@dataclass(frozen=True)
class Seen:
    at: float  # time.monotonic()
    port: int
    metadata: dict[str, str]


@dataclass
class Script:
    """What the upstreams do: per endpoint port, or for every call in turn (`queue`), else Ok."""

    queue: list[Action] = field(default_factory=list)
    by_port: dict[int, Callable[[], Action]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def next(self, port: int, metadata: dict[str, str]) -> Action:
        self.seen.append(Seen(time.monotonic(), port, metadata))
        if port in self.by_port:
            return self.by_port[port]()
        return self.queue.pop(0) if self.queue else Ok()


class _Flaky(grpc.GenericRpcHandler):  # type: ignore[misc,unused-ignore]  # grpc is untyped here
    def __init__(self, script: Script, port: list[int]) -> None:
        self.script = script
        self.port = port  # filled in once the server is bound

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method != METHOD:
            return None
        return grpc.unary_stream_rpc_method_handler(self._call)

    async def _call(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:  # type: ignore[type-arg,unused-ignore]
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        action = self.script.next(self.port[0], metadata)
        if isinstance(action, Sleep):
            await asyncio.sleep(action.seconds)
        elif isinstance(action, Fail):
            if action.pushback is not None:
                context.set_trailing_metadata((("grpc-retry-pushback-ms", action.pushback),))
            await context.abort(action.code, "scripted failure")
        elif isinstance(action, FailAfterMessage):
            yield request
            await context.abort(action.code, "scripted failure after a message")
        yield request


@dataclass
class FlakyMesh:
    sidecar: Sidecar
    outbound: str
    ports: list[int]
    script: Script
    servers: list[grpc.aio.Server]

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.outbound, options=[("grpc.enable_retries", 0)])

    async def call(
        self, channel: grpc.aio.Channel, body: bytes = b"ping", timeout: float = 10.0
    ) -> list[bytes]:
        """One call (unary request, streamed reply): the replies, or grpc.aio.AioRpcError."""
        call = channel.unary_stream(METHOD)(body, timeout=timeout)
        return [reply async for reply in call]

    def stat(self, name: str) -> int:
        return int(self.sidecar.stats.counters.get(name, 0))


def route(**policy: Any) -> dict[str, Any]:
    """A VirtualService http[] entry to service flaky with the given timeout/retries/fault/..."""
    return {"route": [{"destination": {"host": "flaky"}}], **policy}


def virtual_service(*http: dict[str, Any]) -> Policy:
    return Policy("VirtualService", "default", "flaky", {"hosts": ["flaky"], "http": list(http)})


@asynccontextmanager
async def flaky_mesh(
    root: Path,
    policies: Sequence[Policy],
    *,
    endpoints: int = 1,
    script: Script | None = None,
    config: dict[str, Any] | None = None,
    seed: int = 7,
    labels: Sequence[dict[str, str]] = (),
) -> AsyncIterator[FlakyMesh]:
    script = script if script is not None else Script()
    ca = CertificateAuthority.create("cluster.local", now=datetime.now(UTC))
    server_files = issue_workload_files(ca, SpiffeId("cluster.local", "default", "flaky"), root / "flaky")
    client_files = issue_workload_files(ca, SpiffeId("cluster.local", "default", "client"), root / "client")
    credentials = grpc.ssl_server_credentials(
        [(server_files.key.read_bytes(), server_files.cert.read_bytes())],
        root_certificates=server_files.ca.read_bytes(),
        require_client_auth=True,
    )
    servers: list[grpc.aio.Server] = []
    ports: list[int] = []
    for _ in range(endpoints):
        port_box: list[int] = [0]
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_Flaky(script, port_box),))
        port_box[0] = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        servers.append(server)
        ports.append(port_box[0])
    sidecar = Sidecar(
        parse_config(
            {
                "service": "client",
                "listeners": {"outbound": "127.0.0.1:0", "admin": "127.0.0.1:0"},
                "tls": {
                    "cert": str(client_files.cert),
                    "key": str(client_files.key),
                    "ca": str(client_files.ca),
                },
                **(config or {}),
            }
        ),
        rand=random.Random(seed),
    )
    eps = tuple(
        Endpoint(Address("127.0.0.1", port), labels[i] if i < len(labels) else {})
        for i, port in enumerate(ports)
    )
    services = {"flaky": ServiceEntry("flaky", ("test.Flaky",), eps)}
    policies = tuple(policies)
    sidecar.apply(Discovered("1-test", 1, services, policies, traffic=compile_traffic(policies, services)))
    try:
        addresses = await sidecar.start()
        yield FlakyMesh(sidecar, addresses["outbound"], ports, script, servers)
    finally:
        # Servers first: grpc's server does not answer TLS close_notify, so a sidecar closing its
        # connections first would wait out asyncio's 30 s SSL shutdown timeout.
        for server in servers:
            await server.stop(None)
        await sidecar.stop(0.2)
