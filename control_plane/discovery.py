"""The discovery service: one bidirectional stream per sidecar, snapshots out, Acks/Nacks in.

A stream opens with the sidecar's Hello (anything else, or a bad field, is INVALID_ARGUMENT; no
Hello within `hello_timeout` is DEADLINE_EXCEEDED; a node id connected on another stream with a
different registration is ALREADY_EXISTS); the sidecar is registered and gets its first snapshot
at once (once the warm-up is over, see below). After that, one background task waits for a
change — `notify_changed()` after a store write, or a registry change (an endpoint came, left or
changed health; a disconnected endpoint's grace ran out) — lets further changes gather for the
debounce interval, reads the store once (in a worker thread: SQLite never blocks the loop), then
rebuilds every connected sidecar's snapshot from that one revision and sends it only to the
sidecars whose content changed. Those whose content did not change but had acknowledged it are
recorded as having applied the new store revision too, which is what `wait_for_revision` (for
`meshctl apply --wait`) waits for. A pass that fails (the store unreadable, say) loses nothing:
the change stays pending and the pass is retried after a short backoff.

Each stream has an outbox; its handler writes what is queued, the newest winning when several
snapshots queued up behind a slow stream. It remembers the last versions it actually wrote, and
an Ack or Nack of any other version is logged and ignored. When the stream ends the sidecar is
marked disconnected; its endpoint leaves the other sidecars' snapshots after the registry's
grace. gRPC keepalive (`ServerKeepalive`, both ways) makes a stream whose peer vanished without
closing the connection end too.

Authentication (control_plane.discovery_auth): a Hello that carries an identity proof (the
sidecar's certificate from the mesh CA and a signature with its key) registers the certificate's
identity, for the service and namespace it names (PERMISSION_DENIED otherwise); a renewed
certificate is proven again on the stream (`certificate`). A Hello without a proof — or with one
that fails — is refused (UNAUTHENTICATED) when `require_identity` is set; otherwise it registers
with its claimed identity, marked unverified. The control plane's gRPC port (15010) must not be
exposed beyond the hosts that run sidecars.

Warm-up: the registry lives in memory, so a control plane that just (re)started knows no
endpoints. For `warmup` seconds after start it registers the sidecars that reconnect but sends
nothing; then every connected sidecar gets its first snapshot. Without it, the first sidecars
back would be sent snapshots lacking the endpoints of those not back yet, and their calls would
fail for a moment. A sidecar connecting during the warm-up becomes ready at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
from mesh.v1 import discovery_pb2, discovery_pb2_grpc

from control_plane.api_errors import ApiError, PermissionDenied
from control_plane.discovery_auth import DiscoveryAuthenticator, ProvenIdentity
from control_plane.registry import Clock, InvalidHello, NodeIdInUse, Registration, Registry, SidecarRecord
from control_plane.resources import Store
from control_plane.snapshots import Resources, SnapshotBuilder, version_hash

log = logging.getLogger(__name__)

DEFAULT_DEBOUNCE = 0.03
# After a (re)start, how long to only listen: the sidecars that were connected before come back
# within their reconnect backoff (at most 2 s, +20% jitter), and until they have, the registry
# lacks their endpoints — a snapshot sent then would drop live endpoints from their callers.
DEFAULT_WARMUP = 3.0
# After a failed push pass: retry after this, doubling up to the maximum, until one succeeds.
RETRY_INITIAL = 0.05
RETRY_MAXIMUM = 2.0
# How many of the versions written to a stream are remembered for its Acks and Nacks. The
# outbox keeps only the newest, so a sidecar has at most a couple unanswered at any time.
WRITTEN_VERSIONS = 16


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


@dataclass(frozen=True, slots=True)
class ServerKeepalive:
    """gRPC keepalive on the control plane's server. It pings a sidecar whose connection has been
    silent for `time` and drops the connection when the ping is not answered within `timeout`, so a
    sidecar that vanished without closing it (a dead host, a dropped path) is disconnected and its
    endpoint leaves after the grace. It accepts the sidecars' own pings as often as every
    `min_client_ping_interval` (sidecars ping every 10 s; see `sidecar.discovery.Keepalive`):
    pinging more often than the server allows gets a connection closed ("too many pings")."""

    time: float = 10.0
    timeout: float = 5.0
    min_client_ping_interval: float = 5.0

    def server_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.keepalive_time_ms", _ms(self.time)),
            ("grpc.keepalive_timeout_ms", _ms(self.timeout)),
            # grpcio (1.85) times an unanswered keepalive ping out after the ping timeout
            # (default 60 s), not the keepalive timeout: both are set.
            ("grpc.http2.ping_timeout_ms", _ms(self.timeout)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", _ms(self.min_client_ping_interval)),
            ("grpc.http2.max_pings_without_data", 0),  # a discovery stream is mostly silent
        ]


@dataclass(eq=False)
class _Session:
    node_id: str
    session: int
    outbox: asyncio.Queue[discovery_pb2.Snapshot | None] = field(default_factory=asyncio.Queue)
    sent_hash: str = ""  # content hash of the last snapshot queued for this stream
    queued_revision: int = 0  # store revision of the last snapshot queued
    # version → store revision of the last snapshots written to the stream (Acks must name one)
    written: OrderedDict[str, int] = field(default_factory=OrderedDict)

    def close(self) -> None:
        self.outbox.put_nowait(None)

    def wrote(self, snapshot: discovery_pb2.Snapshot) -> None:
        self.written[snapshot.version] = snapshot.store_revision
        self.written.move_to_end(snapshot.version)
        while len(self.written) > WRITTEN_VERSIONS:
            self.written.popitem(last=False)


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    await context.abort(code, details)
    raise AssertionError("unreachable: abort raises")


def registration_of(hello: discovery_pb2.Hello) -> Registration:
    return Registration(
        node_id=hello.node_id,
        service=hello.service,
        namespace=hello.namespace or "default",
        labels=dict(hello.labels),
        inbound_address=hello.inbound_address,
        identity=hello.identity,
        grpc_services=tuple(hello.grpc_services),
        dependencies=tuple(hello.dependencies),
        admin_address=hello.admin_address,
    )


class DiscoveryServicer(discovery_pb2_grpc.DiscoveryServiceServicer):  # type: ignore[misc]
    """`mesh.v1.DiscoveryService` on grpc.aio. Add it to a server with
    `discovery_pb2_grpc.add_DiscoveryServiceServicer_to_server`; call `await stop()` before the
    server stops. The push loop starts with the first stream (or `start()`)."""

    def __init__(
        self,
        store: Store,
        registry: Registry | None = None,
        *,
        builder: SnapshotBuilder | None = None,
        debounce: float = DEFAULT_DEBOUNCE,
        warmup: float = DEFAULT_WARMUP,
        hello_timeout: float = 10.0,
        retry_initial: float = RETRY_INITIAL,
        retry_maximum: float = RETRY_MAXIMUM,
        clock: Clock = time.monotonic,
        authenticator: DiscoveryAuthenticator | None = None,
        require_identity: bool = False,
    ) -> None:
        self.store = store
        self.authenticator = authenticator
        self.require_identity = require_identity
        self.registry = registry if registry is not None else Registry(clock=clock)
        self.builder = builder if builder is not None else SnapshotBuilder()
        self.debounce = debounce
        self.warmup = warmup
        self.hello_timeout = hello_timeout
        self.retry_initial = retry_initial
        self.retry_maximum = retry_maximum
        self._warm_until: float | None = None  # on the registry's clock
        self._sessions: dict[str, _Session] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None  # the push loop has something to look at
        self._dirty = False  # something changed since the last rebuild
        self._acked: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._unsubscribe = self.registry.subscribe(self._on_registry_change)
        self.pushes = 0  # snapshots queued after the first one of a stream (for tests and metrics)
        self.failed_passes = 0  # push passes that raised (each one is retried)
        self.acks = 0  # Acks and Nacks of versions sent on the stream (for metrics)
        self.nacks = 0
        # Called after a pass that queued snapshots with the seconds since the change it pushes
        # was noticed (the first notify or registry change not yet pushed), for metrics.
        self.on_push: Callable[[float], None] | None = None
        self._dirty_since: float | None = None  # time.monotonic() of that first change

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the push loop on the running event loop (idempotent)."""
        if self._task is not None or self._stopped:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self.warmup > 0:
            self._warm_until = self.registry.clock() + self.warmup
            self._dirty = True  # the first snapshots go out when the warm-up ends
        self._acked = asyncio.Event()
        self._task = self._loop.create_task(self._push_loop(), name="discovery-push")

    async def stop(self) -> None:
        """Stop pushing and end every stream (their sidecars reconnect elsewhere or later)."""
        self._stopped = True
        self._unsubscribe()
        for session in list(self._sessions.values()):
            session.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def notify_changed(self) -> None:
        """The store changed: rebuild and push after the debounce. Safe from any thread."""
        loop = self._loop
        if loop is None:
            return  # no stream yet: every stream starts from a fresh build anyway
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._mark_dirty()
        else:
            loop.call_soon_threadsafe(self._mark_dirty)

    def _mark_dirty(self) -> None:
        self._dirty = True
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()
        if self._wake is not None:
            self._wake.set()

    def _on_registry_change(self) -> None:
        self._mark_dirty()

    # ------------------------------------------------------------------ waiting for sidecars

    @property
    def warming(self) -> bool:
        """Within the warm-up after start: sidecars register, nothing is sent yet."""
        if self._warm_until is None:
            return False
        if self.registry.clock() < self._warm_until:
            return True
        self._warm_until = None
        return False

    def caught_up(self, revision: int) -> bool:
        return all(r.applied_revision >= revision for r in self.registry.connected())

    async def wait_for_revision(self, revision: int, timeout: float) -> bool:
        """True once every connected sidecar has applied a snapshot built from `revision` or a
        later one (or one whose content that revision does not change); False at the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.caught_up(revision):
            remaining = deadline - loop.time()
            if remaining <= 0 or self._acked is None:
                return self.caught_up(revision)
            self._acked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked.wait(), remaining)
        return True

    def _progress(self) -> None:
        if self._acked is not None:
            self._acked.set()

    # ------------------------------------------------------------------ the stream

    async def StreamSnapshots(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        if self._stopped:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "control plane is stopping")
        self.start()
        try:
            first = await asyncio.wait_for(context.read(), self.hello_timeout)
        except TimeoutError:
            await _abort(
                context, grpc.StatusCode.DEADLINE_EXCEEDED, f"no hello within {self.hello_timeout:g}s"
            )
        if first is grpc.aio.EOF:
            return
        kind = first.WhichOneof("message")
        if kind != "hello":
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"the first message must be a hello, got {kind}"
            )
        identity = await self._authenticate(first.hello, context)
        registration = registration_of(first.hello)
        if identity is not None:
            registration = dataclasses.replace(registration, identity=str(identity.spiffe_id))
        try:
            record = self.registry.register(registration)
        except InvalidHello as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except NodeIdInUse as exc:
            log.warning("refused a hello: %s", exc)
            await _abort(context, grpc.StatusCode.ALREADY_EXISTS, str(exc))
        node_id = record.node_id
        if identity is not None:
            self.registry.set_certificate(node_id, identity.serial, identity.not_after)
        session = _Session(node_id, record.session)
        previous = self._sessions.get(node_id)
        if previous is not None:
            previous.close()  # the same sidecar on a new stream: the old one ends
        self._sessions[node_id] = session
        reader = asyncio.get_running_loop().create_task(self._read(context, session))
        try:
            if not self.warming:
                await self._send_first(session)
            while True:
                snapshot = await session.outbox.get()
                while snapshot is not None and not session.outbox.empty():
                    snapshot = session.outbox.get_nowait()  # a newer one supersedes it
                if snapshot is None:
                    break
                session.wrote(snapshot)
                await context.write(discovery_pb2.StreamSnapshotsResponse(snapshot=snapshot))
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            if self._sessions.get(node_id) is session:
                del self._sessions[node_id]
            self.registry.disconnect(node_id, session.session)
            self._progress()
            if self._wake is not None:
                self._wake.set()  # the push loop re-arms its grace timer

    async def _authenticate(
        self, hello: discovery_pb2.Hello, context: grpc.aio.ServicerContext
    ) -> ProvenIdentity | None:
        """The identity a Hello proves, None when it proves none (allowed unless required)."""
        if self.authenticator is None:
            return None
        if not hello.HasField("proof"):
            if self.require_identity:
                await _abort(
                    context,
                    grpc.StatusCode.UNAUTHENTICATED,
                    "this control plane requires an identity proof in the Hello: a certificate from its "
                    "CA (a sidecar with a join token sends one)",
                )
            return None
        try:
            return self.authenticator.verify_hello(hello)
        except ApiError as exc:
            if self.require_identity or isinstance(exc, PermissionDenied):
                await _abort(context, grpc.StatusCode[exc.code], exc.message)
            log.warning("sidecar %s: %s; registered as unverified", hello.node_id, exc.message)
            return None

    def _certificate_report(self, node_id: str, proof: discovery_pb2.IdentityProof) -> None:
        """A renewed certificate, proven on the stream: update what status shows."""
        record = self.registry.get(node_id)
        if self.authenticator is None or record is None:
            return
        try:
            identity = self.authenticator.verify(proof, node_id)
        except ApiError as exc:
            log.warning("sidecar %s: certificate report refused: %s", node_id, exc.message)
            return
        if str(identity.spiffe_id) != record.registration.identity:
            log.warning(
                "sidecar %s registered as %s reported a certificate for %s; ignored",
                node_id,
                record.registration.identity,
                identity.spiffe_id,
            )
            return
        self.registry.set_certificate(node_id, identity.serial, identity.not_after)

    async def _send_first(self, session: _Session) -> None:
        """Queue a new stream's first snapshot (the store read in a worker thread)."""
        try:
            resources = await asyncio.to_thread(self.builder.load, self.store)
        except Exception:
            if self._stopped:
                return
            log.exception("reading the store for %s's first snapshot failed; retrying", session.node_id)
            self._mark_dirty()  # the push loop sends it (a session that was sent nothing differs)
            return
        record = self._current(session)
        if record is not None:
            self._offer(session, record, resources)

    async def _read(self, context: grpc.aio.ServicerContext, session: _Session) -> None:
        node_id = session.node_id
        try:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    break
                if self._sessions.get(node_id) is not session:
                    break
                kind = request.WhichOneof("message")
                if kind == "ack":
                    version = request.ack.version
                    revision = session.written.get(version)
                    if revision is None:
                        log.warning("sidecar %s acked %r, which it was not sent; ignored", node_id, version)
                    else:
                        self.acks += 1
                        self.registry.ack(node_id, version, revision)
                elif kind == "nack":
                    version = request.nack.version
                    if version not in session.written:
                        log.warning("sidecar %s nacked %r, which it was not sent; ignored", node_id, version)
                    else:
                        self.nacks += 1
                        self.registry.nack(node_id, version, request.nack.reason)
                        log.warning(
                            "sidecar %s refused snapshot %s: %s", node_id, version, request.nack.reason
                        )
                elif kind == "health":
                    self.registry.set_serving(node_id, request.health.serving)
                elif kind == "certificate":
                    self._certificate_report(node_id, request.certificate)
                elif kind == "hello":
                    log.warning("sidecar %s sent a second hello; ignored", node_id)
                    self.registry.seen(node_id)
                self._progress()
        except Exception as exc:  # the stream broke: same as its end
            log.info("stream of %s ended: %r", node_id, exc)
        finally:
            session.close()

    def _current(self, session: _Session) -> SidecarRecord | None:
        """The session's record, if the session is still the sidecar's live stream."""
        record = self.registry.get(session.node_id)
        if record is None or record.session != session.session or not record.connected:
            return None
        if self._sessions.get(session.node_id) is not session:
            return None
        return record

    def _offer(self, session: _Session, record: SidecarRecord, resources: Resources) -> bool:
        """Build the sidecar's snapshot from `resources` and queue it if its content changed;
        True if queued. Never queues a snapshot older than one already queued (a new stream's
        first read and a push pass can overlap)."""
        if resources.revision < session.queued_revision:
            return False
        snapshot = self.builder.build(record, self.registry, resources)
        if version_hash(snapshot.version) == session.sent_hash:
            self.registry.still_current(record.node_id, snapshot.store_revision)
            return False
        session.sent_hash = version_hash(snapshot.version)
        session.queued_revision = snapshot.store_revision
        self.registry.sent(record.node_id, snapshot.version, snapshot.store_revision)
        session.outbox.put_nowait(snapshot)
        return True

    # ------------------------------------------------------------------ the push loop

    async def _push_loop(self) -> None:
        wake = self._wake
        assert wake is not None
        failures = 0
        retry_at: float | None = None  # after a failed pass, not before this (registry clock)
        while True:
            # Sleep until a change, or until a disconnected endpoint's grace runs out (a stream's
            # end wakes the loop too, to set that timer), the warm-up ends or a retry is due.
            deadlines = [
                d for d in (self.registry.next_deadline(), self._warm_until, retry_at) if d is not None
            ]
            timeout = max(0.0, min(deadlines) - self.registry.clock()) if deadlines else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)
            wake.clear()
            self.registry.expire()  # marks us dirty if an endpoint's grace ran out
            if self.warming or not self._dirty:
                continue
            if retry_at is not None and self.registry.clock() < retry_at:
                continue
            retry_at = None
            await asyncio.sleep(self.debounce)  # let a burst of changes become one push
            try:
                await self.push_all()
            except Exception as exc:
                failures += 1
                self.failed_passes += 1
                delay = min(self.retry_maximum, self.retry_initial * 2 ** min(failures - 1, 30))
                message = "rebuilding snapshots failed (%d in a row); retrying in %.2fs: %s"
                # The traceback once; while the cause lasts (a store that stays unreadable), a line.
                log.log(logging.ERROR, message, failures, delay, exc, exc_info=failures == 1)
                self._dirty = True  # the change is still to be pushed
                retry_at = self.registry.clock() + delay
            else:
                failures = 0

    async def push_all(self) -> int:
        """Read the store once (in a worker thread), rebuild every connected sidecar's snapshot
        from that revision and queue those that changed; returns how many were queued. Raises
        when the store cannot be read (the push loop retries). (Tests may call this too.)"""
        self.registry.expire()
        self._dirty = False  # this pass includes every change so far
        since, self._dirty_since = self._dirty_since, None
        try:
            resources = await asyncio.to_thread(self.builder.load, self.store)
        except BaseException:
            if self._dirty_since is None:
                self._dirty_since = since  # still to be pushed: the retry's latency counts from it
            raise
        queued = 0
        for session in list(self._sessions.values()):
            record = self._current(session)
            if record is not None and self._offer(session, record, resources):
                queued += 1
        self.pushes += queued
        self._progress()
        if queued and since is not None and self.on_push is not None:
            self.on_push(time.monotonic() - since)
        return queued

    def sidecars(self) -> list[SidecarRecord]:
        """Every sidecar the registry knows, for status (copies)."""
        return self.registry.sidecars()
