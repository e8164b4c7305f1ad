"""The registry: which sidecars are connected, what each serves, and what config each applied.

A sidecar registers over its discovery stream (its Hello) and stays registered while the stream
is open. Its instance is an *endpoint* of its service while it has an inbound address, reports
its app as serving, and is connected — or was disconnected less than `grace` seconds ago, so a
sidecar that reconnects after a blip (or a control-plane restart) does not make its endpoint
flap out of every other sidecar's snapshot.

The registry is plain synchronous state, used from the control plane's event loop. Changes that
can alter what other sidecars are pushed (an endpoint appearing, leaving, or changing) bump
`generation` and call the listeners; acknowledgements only update the record. Time comes from an
injected monotonic clock (grace) and wall clock (`last_seen`, for operators).
"""

from __future__ import annotations

import enum
import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

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
        """Return self, or raise InvalidHello naming the first bad field."""
        _name(self.node_id, "node_id", extra=":@/~")
        _name(self.service, "service")
        _name(self.namespace, "namespace")
        if self.inbound_address:
            _address(self.inbound_address, "inbound_address")
        if self.admin_address:
            _address(self.admin_address, "admin_address")
        if self.identity and not self.identity.startswith("spiffe://"):
            raise InvalidHello("identity", f"expected a spiffe:// ID, got {self.identity!r}")
        for i, name in enumerate(self.grpc_services):
            if not name or "/" in name or " " in name:
                raise InvalidHello(f"grpc_services[{i}]", f"expected a gRPC service name, got {name!r}")
        for i, dep in enumerate(self.dependencies):
            _name(dep, f"dependencies[{i}]")
        return self


def _name(value: str, field_name: str, extra: str = "") -> None:
    if not value:
        raise InvalidHello(field_name, "required")
    if not all(c.isalnum() or c in "-_." + extra for c in value):
        raise InvalidHello(field_name, f"expected a name (letters, digits, '-', '_', '.'), got {value!r}")


def _address(value: str, field_name: str) -> None:
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidHello(field_name, f"bad IPv6 address in {value!r}") from None
    if not sep or not host or (":" in host and not value.startswith("[")):
        raise InvalidHello(field_name, f"expected 'host:port', got {value!r}")
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise InvalidHello(field_name, f"port must be 1..65535, got {port!r}")


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
        """A sidecar's stream opened (a reconnect replaces its old record). Raises InvalidHello."""
        registration.validate()
        self._sessions += 1
        now = self.clock()
        record = SidecarRecord(registration, self._sessions, connected_at=now, last_seen=self._wall())
        old = self._records.get(registration.node_id)
        if old is not None and old.registration == registration:
            # The same sidecar again (a reconnect): what it applied is still applied.
            record.applied_version = old.applied_version
            record.applied_revision = old.applied_revision
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
        if self.grace == 0 and _is_endpoint(record.registration):
            self._expired.add(node_id)
            self._changed()

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

    def ack(self, node_id: str, version: str) -> None:
        record = self._records.get(node_id)
        if record is None:
            return
        record.last_seen = self._wall()
        record.applied_version = version
        if version == record.sent_version:
            record.applied_revision = record.sent_revision
            record.state = AckState.ACK
            record.nack_reason = ""
        else:  # an answer to an earlier push; the latest is still pending
            record.applied_revision = max(record.applied_revision, _revision_of(version))

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
        so calls to it fail as "no endpoints" rather than "no route")."""
        grouped: dict[str, list[SidecarRecord]] = {}
        for record in self._records.values():
            if _is_endpoint(record.registration) and self.is_live(record):
                grouped.setdefault(record.service, []).append(record)
        services = {}
        for name in sorted(grouped):
            records = grouped[name]
            endpoints = sorted(
                (
                    EndpointInfo(r.inbound_address, dict(r.labels), r.identity, r.node_id)
                    for r in records
                    if r.serving
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


def _is_endpoint(registration: Registration) -> bool:
    return bool(registration.inbound_address)


def _most_common(values: Iterable[str]) -> str:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return min(counts, key=lambda v: (-counts[v], v))


def _revision_of(version: str) -> int:
    prefix = version.partition("-")[0]
    return int(prefix) if prefix.isdigit() else 0
