"""Simulated sidecars for the control-plane benchmark: discovery clients on one grpc.aio event loop.

Each one opens its own `mesh.v1.DiscoveryService/StreamSnapshots` stream on a channel of its own
(its own TCP connection, as a sidecar process would have), says Hello, and answers every snapshot
with an Ack at once, noting when the snapshot arrived and when the Ack was written. Nothing is
applied: what the benchmark times is the control plane (store write, rebuild, send, bookkeeping)
and the wire, not a real sidecar's reload (`sidecar.discovery` validates and swaps its config
before it Acks).

The pure parts (the fleet's Hellos, percentiles, the all-Acked checks) need no processes and are
unit tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from mesh.v1 import discovery_pb2, discovery_pb2_grpc

TARGET_SERVICE = "users"  # what the benchmark's VirtualService routes: every simulated sidecar calls it
CLIENT_SERVICE = "web"
TRUST_DOMAIN = "cluster.local"
NAMESPACE = "default"
INBOUND_EVERY = 5  # every 5th sidecar is a `users` instance with an inbound address (an endpoint)
INBOUND_BASE_PORT = 20000  # nothing listens there: the control plane never dials an endpoint
CHANNEL_OPTIONS = [
    # A channel of its own per sidecar: without this, grpc shares one connection between channels to
    # the same target, and the control plane would see 100 streams on one connection.
    ("grpc.use_local_subchannel_pool", 1),
]


# ---------------------------------------------------------------------------------------- pure parts


def fleet_hellos(count: int) -> list[discovery_pb2.Hello]:
    """`count` distinct sidecars that all depend on TARGET_SERVICE. Every INBOUND_EVERY-th one is a
    TARGET_SERVICE instance with an inbound address (labels version v1 and v2 in turn), so the
    snapshots carry endpoints; the others are client-only CLIENT_SERVICE sidecars."""
    hellos = []
    for i in range(count):
        if i % INBOUND_EVERY == 0:
            version = "v1" if (i // INBOUND_EVERY) % 2 == 0 else "v2"
            hello = discovery_pb2.Hello(
                node_id=f"sim-{i:04d}-{TARGET_SERVICE}",
                service=TARGET_SERVICE,
                namespace=NAMESPACE,
                labels={"version": version},
                inbound_address=f"127.0.0.1:{INBOUND_BASE_PORT + i}",
                identity=f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{TARGET_SERVICE}",
                grpc_services=["demo.v1.Users"],
                dependencies=[TARGET_SERVICE],
            )
        else:
            hello = discovery_pb2.Hello(
                node_id=f"sim-{i:04d}-{CLIENT_SERVICE}",
                service=CLIENT_SERVICE,
                namespace=NAMESPACE,
                labels={"version": "v1"},
                identity=f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{CLIENT_SERVICE}",
                dependencies=[TARGET_SERVICE],
            )
        hellos.append(hello)
    return hellos


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank q-th percentile (0 < q <= 100), as bench.h2load's; 0 when empty. With fewer than
    100 values p99 is the maximum."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = min(max(1, math.ceil(q / 100 * len(ordered))), len(ordered))
    return float(ordered[rank - 1])


@dataclass(frozen=True, slots=True)
class Receipt:
    """One snapshot a simulated sidecar got. Times are time.monotonic() seconds."""

    received: float
    acked: float  # the Ack written to the stream
    version: str
    store_revision: int


def lagging(acked: Mapping[str, int], revision: int) -> list[str]:
    """The sidecars (by node id, sorted) that have not Acked a snapshot of `revision` or later,
    given each one's highest Acked store revision."""
    return sorted(node for node, rev in acked.items() if rev < revision)


def all_acked(acked: Mapping[str, int], revision: int) -> bool:
    """Every sidecar has Acked a snapshot built from `revision` or a later one (none: False)."""
    return bool(acked) and not lagging(acked, revision)


def all_acked_at(receipts: Mapping[str, Sequence[Receipt]], revision: int) -> float | None:
    """When the last of the sidecars Acked its first snapshot of `revision` or later; None while
    any has not (or there are no sidecars). Each sidecar's receipts are in arrival order."""
    if not receipts:
        return None
    latest = -math.inf
    for history in receipts.values():
        first = next((r.acked for r in history if r.store_revision >= revision), None)
        if first is None:
            return None
        latest = max(latest, first)
    return latest


def first_received_at(receipts: Mapping[str, Sequence[Receipt]], revision: int) -> float | None:
    """When the first sidecar received a snapshot of `revision` or later; None if none has."""
    times = [r.received for history in receipts.values() for r in history if r.store_revision >= revision]
    return min(times) if times else None


def snapshots_between(receipts: Mapping[str, Sequence[Receipt]], after: int, upto: int) -> int:
    """How many snapshots, over all sidecars, were built from a revision in (after, upto]."""
    return sum(after < r.store_revision <= upto for history in receipts.values() for r in history)


# ---------------------------------------------------------------------------------------- the fleet


class FleetError(Exception):
    """A simulated sidecar's stream failed or ended, or the fleet did not catch up in time."""


@dataclass(eq=False)
class SimSidecar:
    hello: discovery_pb2.Hello
    on_ack: Callable[[], None]
    receipts: list[Receipt] = field(default_factory=list)
    acked_revision: int = 0
    error: str | None = None

    @property
    def node_id(self) -> str:
        return str(self.hello.node_id)

    async def run(self, target: str) -> None:
        """Stream until cancelled; an error or the stream's end is kept in `error`."""
        try:
            async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
                stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
                call = stub.StreamSnapshots()
                try:
                    await self._converse(call)
                finally:
                    call.cancel()
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            self.error = f"{self.node_id}: stream failed: {exc.code().name}: {exc.details()}"
        except Exception as exc:
            self.error = f"{self.node_id}: {exc!r}"
        finally:
            self.on_ack()  # wake whoever waits, to notice the error

    async def _converse(self, call: grpc.aio.StreamStreamCall) -> None:
        await call.write(discovery_pb2.StreamSnapshotsRequest(hello=self.hello))
        if self.hello.inbound_address:
            # As a sidecar does once its app answers its health check: only then is it an endpoint.
            await call.write(
                discovery_pb2.StreamSnapshotsRequest(health=discovery_pb2.HealthReport(serving=True))
            )
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                self.error = f"{self.node_id}: the control plane ended the stream"
                return
            received = time.monotonic()
            snapshot = response.snapshot
            await call.write(
                discovery_pb2.StreamSnapshotsRequest(ack=discovery_pb2.Ack(version=snapshot.version))
            )
            self.receipts.append(
                Receipt(received, time.monotonic(), snapshot.version, snapshot.store_revision)
            )
            self.acked_revision = max(self.acked_revision, snapshot.store_revision)
            self.on_ack()


class Fleet:
    """N simulated sidecars on the running event loop, all talking to one control plane."""

    def __init__(self, target: str, hellos: Sequence[discovery_pb2.Hello]) -> None:
        self.target = target
        self._changed = asyncio.Event()
        self.sidecars = [SimSidecar(hello, self._changed.set) for hello in hellos]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(s.run(self.target), name=s.node_id) for s in self.sidecars]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def acked(self) -> dict[str, int]:
        return {s.node_id: s.acked_revision for s in self.sidecars}

    def receipts(self) -> dict[str, list[Receipt]]:
        return {s.node_id: s.receipts for s in self.sidecars}

    def errors(self) -> list[str]:
        return [s.error for s in self.sidecars if s.error is not None]

    def last_receipt(self) -> float | None:
        times = [s.receipts[-1].received for s in self.sidecars if s.receipts]
        return max(times) if times else None

    async def wait_for(self, revision: int, timeout: float) -> None:
        """Return once every sidecar has Acked a snapshot of `revision` or later. Raises FleetError
        when a stream fails meanwhile, or at the timeout (naming a few of the sidecars behind)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            errors = self.errors()
            if errors:
                raise FleetError(f"{len(errors)} simulated sidecar(s) lost their stream; first: {errors[0]}")
            if all_acked(self.acked(), revision):
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                behind = lagging(self.acked(), revision)
                raise FleetError(
                    f"{len(behind)} of {len(self.sidecars)} sidecars had not Acked revision {revision} "
                    f"after {timeout:.1f}s (e.g. {', '.join(behind[:3])})"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def settle(self, quiet: float, timeout: float) -> None:
        """Wait until no sidecar has been sent anything for `quiet` seconds (the pushes caused by the
        fleet's own endpoints registering are over). Raises FleetError at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            last = self.last_receipt()
            now = time.monotonic()
            if last is not None and now - last >= quiet:
                return
            if now >= deadline:
                raise FleetError(f"snapshots kept coming for {timeout:.1f}s after the fleet connected")
            wait = quiet if last is None else quiet - (now - last)
            await asyncio.sleep(max(0.01, min(wait, deadline - now)))
