"""The sidecar's side of discovery: a stream to the control plane, snapshots in, Acks/Nacks out.

`DiscoveryClient` opens `mesh.v1.DiscoveryService/StreamSnapshots`, introduces the sidecar with
a Hello, and for every snapshot: converts and validates it (`from_proto`), hands it to the
sidecar (which swaps its snapshot atomically) and Acks — or Nacks with a reason naming the field,
and the sidecar keeps serving on its last good snapshot. When the stream fails or the control
plane is away it reconnects with jittered exponential backoff, and the last good snapshot stays
in force the whole time.

grpc.aio runs on the sidecar's own event loop, uvloop included: the client is a few coroutines
beside the relay, nothing crosses threads. (Measured: a Hello/snapshot round trip over loopback
takes ~150 µs on uvloop, ~130 µs on the default loop.)

The stream is plaintext for now; identity and mutual TLS towards the control plane come with the
certificate issue (issue 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from google.protobuf import json_format
from mesh.v1 import discovery_pb2, discovery_pb2_grpc

from control_plane.resources import KINDS
from control_plane.spiffe import SpiffeId, spiffe_id_of
from sidecar.config import Address, ConfigError, Endpoint, Policy, ServiceEntry, SidecarConfig

log = logging.getLogger(__name__)

Request: TypeAlias = discovery_pb2.StreamSnapshotsRequest


class SnapshotRejected(ValueError):
    """A snapshot the sidecar will not apply: `path` names the field, the message says why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Discovered:
    """A pushed snapshot, validated and in the sidecar's own types."""

    version: str
    store_revision: int
    services: dict[str, ServiceEntry]
    policies: tuple[Policy, ...]


# ---------------------------------------------------------------------------- from_proto


def _check_name(value: str, path: str) -> None:
    if not value or not all(c.isalnum() or c in "-_." for c in value):
        raise SnapshotRejected(path, f"expected a name (letters, digits, '-', '_', '.'), got {value!r}")


def _check_host(host: str, path: str, raw: str) -> None:
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    labels = host.split(".")
    if not all(
        label and len(label) <= 63 and all(c.isalnum() or c == "-" for c in label) for label in labels
    ):
        raise SnapshotRejected(path, f"bad host in {raw!r}")


def _endpoint(message: discovery_pb2.Endpoint, path: str) -> Endpoint:
    try:
        address = Address.parse(message.address, f"{path}.address")
    except ConfigError as exc:
        raise SnapshotRejected(exc.path, exc.reason) from None
    _check_host(address.host, f"{path}.address", message.address)
    if address.port == 0:
        raise SnapshotRejected(f"{path}.address", f"port 0 is not a real port in {message.address!r}")
    if message.identity:
        try:
            SpiffeId.parse(message.identity)
        except ValueError as exc:
            raise SnapshotRejected(f"{path}.identity", str(exc)) from None
    for key in message.labels:
        if not key:
            raise SnapshotRejected(f"{path}.labels", "empty label name")
    return Endpoint(address, dict(message.labels), message.identity)


def _service(message: discovery_pb2.Service, path: str) -> ServiceEntry:
    _check_name(message.name, f"{path}.name")
    if message.namespace:
        _check_name(message.namespace, f"{path}.namespace")
    for i, grpc_service in enumerate(message.grpc_services):
        if not grpc_service or "/" in grpc_service or any(c.isspace() for c in grpc_service):
            raise SnapshotRejected(f"{path}.grpc_services[{i}]", f"not a gRPC service name: {grpc_service!r}")
    endpoints = []
    seen: dict[Address, int] = {}
    for i, ep in enumerate(message.endpoints):
        endpoint = _endpoint(ep, f"{path}.endpoints[{i}]")
        if endpoint.address in seen:
            raise SnapshotRejected(
                f"{path}.endpoints[{i}].address",
                f"duplicate endpoint {ep.address} (also endpoints[{seen[endpoint.address]}])",
            )
        seen[endpoint.address] = i
        endpoints.append(endpoint)
    return ServiceEntry(message.name, tuple(message.grpc_services), tuple(endpoints))


def _plain(value: Any) -> Any:
    """JSON from a Struct, with integral numbers as ints (a Struct only has doubles)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def from_proto(snapshot: discovery_pb2.Snapshot) -> Discovered:
    """Validate a pushed snapshot and convert it; raises SnapshotRejected naming the field."""
    if not snapshot.version:
        raise SnapshotRejected("version", "empty")
    if snapshot.store_revision < 0:
        raise SnapshotRejected("store_revision", f"negative: {snapshot.store_revision}")
    services: dict[str, ServiceEntry] = {}
    index: dict[str, int] = {}
    served_by: dict[str, str] = {}
    for i, message in enumerate(snapshot.services):
        path = f"services[{i}]"
        entry = _service(message, path)
        if entry.name in index:
            raise SnapshotRejected(
                f"{path}.name", f"duplicate service {entry.name!r} (also services[{index[entry.name]}])"
            )
        for j, grpc_service in enumerate(entry.grpc_services):
            other = served_by.setdefault(grpc_service, entry.name)
            if other != entry.name:
                raise SnapshotRejected(
                    f"{path}.grpc_services[{j}]", f"{grpc_service!r} is also served by service {other!r}"
                )
        index[entry.name] = i
        services[entry.name] = entry
    policies = []
    keys: dict[tuple[str, str, str], int] = {}
    for i, resource in enumerate(snapshot.policies):
        path = f"policies[{i}]"
        if resource.kind not in KINDS:
            raise SnapshotRejected(f"{path}.kind", f"unknown kind {resource.kind!r}")
        _check_name(resource.namespace, f"{path}.namespace")
        _check_name(resource.name, f"{path}.name")
        key = (resource.kind, resource.namespace, resource.name)
        if key in keys:
            raise SnapshotRejected(path, f"duplicate {resource.kind} {resource.namespace}/{resource.name}")
        keys[key] = i
        spec = _plain(json_format.MessageToDict(resource.spec))
        policies.append(Policy(*key, spec, resource.resource_version))
    return Discovered(snapshot.version, snapshot.store_revision, services, tuple(policies))


# ---------------------------------------------------------------------------- hello


def identity_of(cert: Path) -> str:
    """The SPIFFE ID in the sidecar's certificate; ValueError if it has none usable."""
    from cryptography import x509

    return spiffe_id_of(x509.load_pem_x509_certificate(cert.read_bytes())).uri


def default_node_id(service: str) -> str:
    """Unique per sidecar process and readable in `meshctl status`."""
    return f"{service}-{socket.gethostname()}-{os.getpid()}"


def hello_for(
    config: SidecarConfig, addresses: Mapping[str, str], *, identity: str, node_id: str
) -> discovery_pb2.Hello:
    """The Hello of a started sidecar: `addresses` are the listeners as actually bound."""
    return discovery_pb2.Hello(
        node_id=node_id,
        service=config.service,
        namespace=config.namespace,
        labels=config.labels,
        inbound_address=addresses.get("inbound", ""),
        identity=identity,
        grpc_services=config.grpc_services,
        dependencies=config.dependencies,
        admin_address=addresses.get("admin", ""),
    )


# ---------------------------------------------------------------------------- the client


class Backoff:
    """Exponential backoff with jitter: initial, times multiplier after each failure, capped at maximum,
    each delay scaled by a random factor in [1 - jitter, 1 + jitter]."""

    def __init__(
        self,
        *,
        initial: float = 0.1,
        maximum: float = 2.0,
        multiplier: float = 2.0,
        jitter: float = 0.2,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.jitter = jitter
        self._rand = rand
        self._base = initial

    def next(self) -> float:
        base = self._base
        self._base = min(self.maximum, base * self.multiplier)
        return base * (1.0 + self.jitter * (2.0 * self._rand() - 1.0))

    def reset(self) -> None:
        self._base = self.initial


Apply = Callable[[Discovered], None]


async def _requests(outbox: asyncio.Queue[Request | None]) -> AsyncIterator[Request]:
    while True:
        request = await outbox.get()
        if request is None:
            return
        yield request


class DiscoveryClient:
    """Keeps one discovery stream open to `target` and applies what it receives.

    `apply(discovered)` swaps the sidecar's snapshot; if it raises, the version is Nacked with
    the error. `sleep` (the backoff wait) and `backoff` are injectable for tests."""

    def __init__(
        self,
        target: str,
        hello: discovery_pb2.Hello,
        apply: Apply,
        *,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        channel_factory: Callable[[str], Any] = grpc.aio.insecure_channel,
    ) -> None:
        self.target = target
        self.hello = hello
        self._apply = apply
        self.backoff = backoff if backoff is not None else Backoff()
        self._sleep = sleep
        self._channel_factory = channel_factory
        self._task: asyncio.Task[None] | None = None
        self._outbox: asyncio.Queue[Request | None] | None = None
        self._stopping = False
        self.serving = True
        self.connected = False
        self.connects = 0  # streams that delivered at least one snapshot
        self.applied_version = ""
        self.applied_revision = 0
        self.last_nack: tuple[str, str] | None = None  # (version, reason)
        self.last_error = ""

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="discovery-client")

    async def stop(self, timeout: float = 1.0) -> None:
        """Tell the control plane this instance stops serving, close the stream (bounded by
        `timeout`), and stop reconnecting."""
        self._stopping = True
        task = self._task
        if task is None:
            return
        outbox = self._outbox
        if outbox is not None and self.connected:
            outbox.put_nowait(Request(health=discovery_pb2.HealthReport(serving=False)))
            outbox.put_nowait(None)  # half-close: the control plane ends the stream
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), timeout)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def report_health(self, serving: bool) -> None:
        """The local app's health changed: tell the control plane (now, or on reconnect)."""
        if serving == self.serving:
            return
        self.serving = serving
        if self._outbox is not None:
            self._outbox.put_nowait(Request(health=discovery_pb2.HealthReport(serving=serving)))

    def status(self) -> dict[str, object]:
        return {
            "target": self.target,
            "node_id": self.hello.node_id,
            "connected": self.connected,
            "applied_version": self.applied_version,
            "applied_revision": self.applied_revision,
            "last_nack": None
            if self.last_nack is None
            else {"version": self.last_nack[0], "reason": self.last_nack[1]},
            "last_error": self.last_error,
        }

    async def run(self) -> None:
        while not self._stopping:
            try:
                await self._stream()
                self.last_error = "stream ended by the control plane"
            except grpc.aio.AioRpcError as exc:
                self.last_error = f"{exc.code().name}: {exc.details()}"
            except OSError as exc:
                self.last_error = str(exc)
            if self._stopping:
                break
            delay = self.backoff.next()
            log.info("discovery: %s; reconnecting in %.2fs", self.last_error, delay)
            await self._sleep(delay)

    async def _stream(self) -> None:
        outbox: asyncio.Queue[Request | None] = asyncio.Queue()
        outbox.put_nowait(Request(hello=self.hello))
        if not self.serving:
            outbox.put_nowait(Request(health=discovery_pb2.HealthReport(serving=False)))
        channel = self._channel_factory(self.target)
        self._outbox = outbox
        try:
            stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
            call = stub.StreamSnapshots(_requests(outbox))
            async for response in call:
                if not self.connected:
                    self.connected = True
                    self.connects += 1
                    log.info("discovery: connected to %s", self.target)
                outbox.put_nowait(self._handle(response.snapshot))
                self.backoff.reset()
        finally:
            self._outbox = None
            self.connected = False
            outbox.put_nowait(None)
            await channel.close()

    def _handle(self, snapshot: discovery_pb2.Snapshot) -> Request:
        version = snapshot.version
        try:
            discovered = from_proto(snapshot)
            self._apply(discovered)
        except SnapshotRejected as exc:
            return self._nack(version, str(exc))
        except Exception as exc:
            log.exception("discovery: applying snapshot %s failed", version)
            return self._nack(version, f"cannot apply: {exc}")
        self.applied_version = version
        self.applied_revision = discovered.store_revision
        self.last_nack = None
        return Request(ack=discovery_pb2.Ack(version=version))

    def _nack(self, version: str, reason: str) -> Request:
        log.warning("discovery: refused snapshot %s: %s", version, reason)
        self.last_nack = (version, reason)
        return Request(nack=discovery_pb2.Nack(version=version, reason=reason))
