"""The registry: which sidecars are connected, what each serves, and what config each applied.

A sidecar registers over its discovery stream (its Hello) and stays registered while the stream
is open. Its instance is an *endpoint* of its service while it has an inbound address, reports
its app as serving, and is connected — or was disconnected less than `grace` seconds ago, so a
sidecar that reconnects after a blip (or a control-plane restart) does not make its endpoint
flap out of every other sidecar's snapshot. A new instance is not serving until its sidecar
reports the app's first health answer; a reconnect (the same registration) keeps what it was.

A Hello is checked with `sidecar.wire_checks`, the very checks a sidecar applies to a snapshot,
so what the registry accepts can never make a sidecar Nack. For the same reason two instances
claiming one inbound address (a sidecar killed -9 and restarted on the same port under a new
node id, while the old record is within its grace) give one endpoint: the connected one, else
the newest. A node id connected on a live stream cannot be taken over by a different
registration (`NodeIdInUse`); the same registration again is a reconnect and takes over.

The registry is plain synchronous state, used from the control plane's event loop. Changes that
can alter what other sidecars are pushed (an endpoint appearing, leaving, or changing) bump
`generation` and call the listeners; acknowledgements only update the record. Time comes from an
injected monotonic clock (grace) and wall clock (`last_seen`, for operators).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from sidecar import wire_checks
from sidecar.wire_checks import CheckFailed

log = logging.getLogger(__name__)

Clock = Callable[[], float]
WallClock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AckState(enum.StrEnum):
    PENDING = "PENDING"  # a snapshot was sent and not answered yet (or none was sent)
    ACK = "ACK"
    NACK = "NACK"


class InvalidHello(ValueError):
    """A Hello the registry refuses: `field` names the field, the message says why."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"hello.{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


class NodeIdInUse(Exception):
    """A Hello for a node id that is connected on another live stream with a different
    registration: two sidecars claim one node id (the discovery service answers ALREADY_EXISTS)."""


@dataclass(frozen=True, slots=True)
class Registration:
    """What a sidecar says about itself when it connects (the Hello, typed)."""

    node_id: str
    service: str
    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    inbound_address: str = ""  # empty for a client-only sidecar
    identity: str = ""
    grpc_services: tuple[str, ...] = ()
    dependencies: tuple[str, ...] = ()  # empty: every service
    admin_address: str = ""

    def validate(self) -> Registration:
        """Return self, or raise InvalidHello naming the first bad field (`sidecar.wire_checks`,
        the checks a sidecar applies to what it is sent)."""
        try:
            wire_checks.check_name(self.node_id, "node_id", extra=":@/~")
            wire_checks.check_name(self.service, "service")
            wire_checks.check_name(self.namespace, "namespace")
            wire_checks.check_labels(self.labels, "labels")
            if self.inbound_address:
                wire_checks.check_address(self.inbound_address, "inbound_address")
            if self.admin_address:
                wire_checks.check_address(self.admin_address, "admin_address")
            wire_checks.check_identity(self.identity, "identity")
            for i, name in enumerate(self.grpc_services):
                wire_checks.check_grpc_service(name, f"grpc_services[{i}]")
            for i, dep in enumerate(self.dependencies):
                wire_checks.check_name(dep, f"dependencies[{i}]")
        except CheckFailed as exc:
            raise InvalidHello(exc.path, exc.reason) from None
        return self


@dataclass(slots=True)
class SidecarRecord:
    """One sidecar as the control plane sees it. Mutable, owned by the registry."""

    registration: Registration
    session: int  # which stream registered it last; an older stream's end is ignored
    connected: bool = True
    serving: bool = True
    connected_at: float = 0.0  # monotonic
    disconnected_at: float | None = None  # monotonic
    last_seen: datetime = field(default_factory=_utc_now)
    sent_version: str = ""
    sent_revision: int = 0  # the store revision the sent snapshot is current for
    applied_version: str = ""
    applied_revision: int = 0
    state: AckState = AckState.PENDING
    nack_reason: str = ""
    # Set when the sidecar proved its identity with a certificate from the mesh CA.
    identity_verified: bool = False
    certificate_serial: str = ""
    certificate_not_after: datetime | None = None

    @property
    def node_id(self) -> str:
        return self.registration.node_id

    @property
    def service(self) -> str:
        return self.registration.service

    @property
    def namespace(self) -> str:
        return self.registration.namespace

    @property
    def labels(self) -> dict[str, str]:
        return self.registration.labels

    @property
    def inbound_address(self) -> str:
        return self.registration.inbound_address

    @property
    def identity(self) -> str:
        return self.registration.identity

    @property
    def grpc_services(self) -> tuple[str, ...]:
        return self.registration.grpc_services

    @property
    def dependencies(self) -> tuple[str, ...]:
        return self.registration.dependencies

    @property
    def admin_address(self) -> str:
        return self.registration.admin_address


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    address: str
    labels: dict[str, str]
    identity: str
    node_id: str


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """A service as the registry knows it: its live instances' endpoints, sorted by address."""

    name: str
    namespace: str
    grpc_services: tuple[str, ...]
    endpoints: tuple[EndpointInfo, ...]


class Registry:
    """Connected sidecars by node id. See the module docstring for the endpoint rules."""

    def __init__(
        self,
        *,
        grace: float = 5.0,
        forget_after: float = 300.0,
        clock: Clock = time.monotonic,
        wall_clock: WallClock = _utc_now,
    ) -> None:
        if grace < 0 or forget_after < grace:
            raise ValueError("need 0 <= grace <= forget_after")
        self.grace = grace
        self.forget_after = forget_after
        self.clock = clock
        self._wall = wall_clock
        self._records: dict[str, SidecarRecord] = {}
        self._sessions = 0
        self._listeners: list[Callable[[], None]] = []
        self._expired: set[str] = set()  # node ids whose grace ran out and were announced
        self.generation = 0

    # ------------------------------------------------------------------ change notification

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener()` after every change that can alter endpoints; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _changed(self) -> None:
        self.generation += 1
        for listener in list(self._listeners):
            listener()

    # ------------------------------------------------------------------ sidecar lifecycle

    def register(self, registration: Registration) -> SidecarRecord:
        """A sidecar's stream opened (a reconnect replaces its old record). Raises InvalidHello,
        or NodeIdInUse when the node id is connected with a different registration."""
        registration.validate()
        old = self._records.get(registration.node_id)
        if old is not None and old.connected and old.registration != registration:
            raise NodeIdInUse(
                f"node_id {registration.node_id!r} is connected on another stream with a different "
                "registration; node ids must be unique per sidecar"
            )
        self._sessions += 1
        now = self.clock()
        record = SidecarRecord(
            registration,
            self._sessions,
            # An endpoint serves calls once its app said so (the sidecar reports its first
            # grpc.health answer right after the Hello); a client-only sidecar has nothing to serve.
            serving=not _is_endpoint(registration),
            connected_at=now,
            last_seen=self._wall(),
        )
        if old is not None and old.registration == registration:
            # The same sidecar again (a reconnect): what it applied is still applied, and its
            # app's health is what it was until it reports otherwise.
            record.applied_version = old.applied_version
            record.applied_revision = old.applied_revision
            record.serving = old.serving
        self._warn_about_conflicts(registration)
        self._records[registration.node_id] = record
        self._expired.discard(registration.node_id)
        if _is_endpoint(registration) or (old is not None and _is_endpoint(old.registration)):
            self._changed()
        return record

    def disconnect(self, node_id: str, session: int) -> None:
        """A sidecar's stream ended; its endpoint stays for `grace` seconds."""
        record = self._records.get(node_id)
        if record is None or record.session != session or not record.connected:
            return
        record.connected = False
        record.disconnected_at = self.clock()
        record.last_seen = self._wall()
        if not _is_endpoint(record.registration):
            return
        if self.grace == 0:
            self._expired.add(node_id)
            self._changed()
        elif self._shares_address(record):
            self._changed()  # a connected instance on the same address becomes the endpoint

    def _shares_address(self, record: SidecarRecord) -> bool:
        key = _address_key(record.inbound_address)
        return any(
            other is not record
            and _is_endpoint(other.registration)
            and self.is_live(other)
            and _address_key(other.inbound_address) == key
            for other in self._records.values()
        )

    def set_certificate(self, node_id: str, serial: str, not_after: datetime) -> None:
        """The sidecar proved its identity with this certificate (at its Hello, or a renewal)."""
        record = self._records.get(node_id)
        if record is None:
            return
        record.last_seen = self._wall()
        record.identity_verified = True
        record.certificate_serial = serial
        record.certificate_not_after = not_after

    def set_serving(self, node_id: str, serving: bool) -> None:
        """The sidecar's local app health changed (grpc.health.v1, as the sidecar reports it)."""
        record = self._records.get(node_id)
        if record is None:
            return
        record.last_seen = self._wall()
        if record.serving != serving:
            record.serving = serving
            if _is_endpoint(record.registration):
                self._changed()

    def sent(self, node_id: str, version: str, revision: int) -> None:
        record = self._records[node_id]
        record.sent_version = version
        record.sent_revision = revision
        record.state = AckState.PENDING
        record.nack_reason = ""

    def still_current(self, node_id: str, revision: int) -> None:
        """The snapshot last sent to this sidecar is also what `revision` gives it: if the
        sidecar applied it, it has applied `revision` too (nothing to push)."""
        record = self._records[node_id]
        record.sent_revision = max(record.sent_revision, revision)
        if record.state is AckState.ACK and record.applied_version == record.sent_version:
            record.applied_revision = max(record.applied_revision, revision)

    def ack(self, node_id: str, version: str, revision: int) -> None:
        """The sidecar applied `version`, built from store `revision`. The caller (the discovery
        stream) passes only versions it actually sent this sidecar, with their revision."""
        record = self._records.get(node_id)
        if record is None:
            return
        record.last_seen = self._wall()
        record.applied_version = version
        if version == record.sent_version:
            record.applied_revision = max(record.sent_revision, revision)
            record.state = AckState.ACK
            record.nack_reason = ""
        else:  # an answer to an earlier push; the latest is still pending
            record.applied_revision = max(record.applied_revision, revision)

    def nack(self, node_id: str, version: str, reason: str) -> None:
        """The sidecar refused `version`; it keeps serving on the one it applied last."""
        record = self._records.get(node_id)
        if record is None:
            return
        record.last_seen = self._wall()
        if version == record.sent_version:
            record.state = AckState.NACK
            record.nack_reason = reason or "(no reason given)"

    def seen(self, node_id: str) -> None:
        record = self._records.get(node_id)
        if record is not None:
            record.last_seen = self._wall()

    # ------------------------------------------------------------------ time

    def next_deadline(self) -> float | None:
        """When (on the registry's clock) the next disconnected endpoint's grace runs out."""
        deadlines = [
            r.disconnected_at + self.grace
            for r in self._records.values()
            if r.disconnected_at is not None
            and not r.connected
            and r.node_id not in self._expired
            and _is_endpoint(r.registration)
        ]
        return min(deadlines) if deadlines else None

    def expire(self) -> bool:
        """Announce endpoints whose grace ran out, forget long-gone sidecars; True if endpoints
        changed. (Reads see expired endpoints as gone anyway; this is for the notification.)"""
        now = self.clock()
        newly = [
            r.node_id
            for r in self._records.values()
            if not r.connected
            and r.disconnected_at is not None
            and now - r.disconnected_at >= self.grace
            and r.node_id not in self._expired
            and _is_endpoint(r.registration)
        ]
        for node_id in [
            r.node_id
            for r in self._records.values()
            if not r.connected
            and r.disconnected_at is not None
            and now - r.disconnected_at >= self.forget_after
        ]:
            del self._records[node_id]
            self._expired.discard(node_id)
        self._expired.update(newly)
        if newly:
            self._changed()
        return bool(newly)

    # ------------------------------------------------------------------ reads

    def get(self, node_id: str) -> SidecarRecord | None:
        return self._records.get(node_id)

    def sidecars(self) -> list[SidecarRecord]:
        """Every sidecar known (connected first, then recently gone), by service then node id,
        as copies: callers may keep them."""
        records = sorted(self._records.values(), key=lambda r: (not r.connected, r.service, r.node_id))
        return [replace(r) for r in records]

    def connected(self) -> list[SidecarRecord]:
        """The records of the sidecars connected now (live objects, owned by the registry)."""
        return [r for r in self._records.values() if r.connected]

    def is_live(self, record: SidecarRecord) -> bool:
        """Connected, or disconnected less than `grace` ago."""
        if record.connected:
            return True
        return record.disconnected_at is not None and self.clock() - record.disconnected_at < self.grace

    def endpoints(self, service: str) -> list[EndpointInfo]:
        info = self.services().get(service)
        return list(info.endpoints) if info is not None else []

    def services(self) -> dict[str, ServiceInfo]:
        """Every service with a live instance that has an inbound address, with its serving
        endpoints (possibly none: a service whose instances all report unhealthy is still known,
        so calls to it fail as "no endpoints" rather than "no route").

        One endpoint per address: when several live instances claim the same inbound address
        (a sidecar restarted on its port under a new node id while the old record is within its
        grace), only the connected one — else the newest — is an endpoint. A sidecar refuses a
        snapshot listing an address twice, and only one process can listen there anyway."""
        grouped: dict[str, list[SidecarRecord]] = {}
        holders: dict[tuple[str, int], SidecarRecord] = {}
        for record in self._records.values():
            if _is_endpoint(record.registration) and self.is_live(record):
                grouped.setdefault(record.service, []).append(record)
                key = _address_key(record.inbound_address)
                best = holders.get(key)
                if best is None or (record.connected, record.session) > (best.connected, best.session):
                    holders[key] = record
        holding = {r.node_id for r in holders.values()}
        services = {}
        for name in sorted(grouped):
            records = grouped[name]
            endpoints = sorted(
                (
                    EndpointInfo(r.inbound_address, dict(r.labels), r.identity, r.node_id)
                    for r in records
                    if r.serving and r.node_id in holding
                ),
                key=lambda e: (e.address, e.node_id),
            )
            services[name] = ServiceInfo(
                name,
                _most_common(r.namespace for r in records),
                tuple(sorted({g for r in records for g in r.grpc_services})),
                tuple(endpoints),
            )
        return services

    def _warn_about_conflicts(self, registration: Registration) -> None:
        """Log what a new registration shares with other live instances: its inbound address
        (only one of them is an endpoint), or a gRPC service of another service (sidecars do not
        route that one by :path; callers must name the service in :authority)."""
        address = _address_key(registration.inbound_address) if registration.inbound_address else None
        for other in self._records.values():
            if other.node_id == registration.node_id or not self.is_live(other):
                continue
            same_address = address is not None and _address_key(other.inbound_address) == address
            if same_address and _is_endpoint(other.registration):
                log.warning(
                    "sidecar %s claims inbound address %s of sidecar %s (%s); the newest connected "
                    "one is the endpoint",
                    registration.node_id,
                    registration.inbound_address,
                    other.node_id,
                    "connected" if other.connected else "disconnected, within its grace",
                )
            shared = sorted(set(registration.grpc_services) & set(other.grpc_services))
            if shared and other.service != registration.service and _is_endpoint(other.registration):
                log.warning(
                    "services %s and %s both serve %s: sidecars route it only when the caller names "
                    "the service in :authority",
                    other.service,
                    registration.service,
                    ", ".join(shared),
                )


def _is_endpoint(registration: Registration) -> bool:
    return bool(registration.inbound_address)


def _most_common(values: Iterable[str]) -> str:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return min(counts, key=lambda v: (-counts[v], v))


def _address_key(address: str) -> tuple[str, int]:
    """What makes two inbound addresses the same endpoint: the (host, port) a sidecar parses."""
    try:
        return wire_checks.check_address(address, "inbound_address")
    except CheckFailed:  # registered addresses always parse; this keeps a read from raising
        return (address, 0)
