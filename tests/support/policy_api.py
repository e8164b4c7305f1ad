"""Shared pieces for the policy API tests: documents, a PolicyService on a real SqliteStore with a
stub registry and a counting notifier, tokens, and a store fingerprint for before/after checks.

(The real Registry and DiscoveryServicer behind the same API are tested with the assembled
control plane, in test_control_plane_server.py.)"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from control_plane.auth import Role, TokenVerifier, load_or_create_signing_key, mint_token
from control_plane.policy_service import PolicyService
from control_plane.resources import ResourceKey
from control_plane.sqlite_store import STORE_FILE, SqliteStore

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
USERS = ResourceKey("VirtualService", "default", "users")


class FakeClock:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class SidecarStub:
    """A registry record: the fields of mesh.v1.SidecarStatus."""

    node_id: str = "users-v1-a"
    service: str = "users"
    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=lambda: {"version": "v1"})
    inbound_address: str = "127.0.0.1:15006"
    identity: str = "spiffe://cluster.local/ns/default/sa/users"
    applied_version: str = "3-abcdef012345"
    sent_version: str = "3-abcdef012345"
    state: str = "ACK"
    nack_reason: str = ""
    last_seen: datetime = NOW
    connected: bool = True
    serving: bool = True
    admin_address: str = "127.0.0.1:15000"
    applied_revision: int = 3
    sent_revision: int = 3
    identity_verified: bool = False
    certificate_serial: str = ""
    certificate_not_after: datetime | None = None


@dataclass
class StubRegistry:
    records: list[SidecarStub] = field(default_factory=list)

    def sidecars(self) -> list[SidecarStub]:
        return list(self.records)


@dataclass
class Notifier:
    """Stands in for DiscoveryServicer.notify_changed: counts the pushes asked for."""

    calls: int = 0

    def __call__(self) -> None:
        self.calls += 1


def virtual_service(
    name: str = "users",
    *,
    weights: Sequence[int] = (90, 10),
    namespace: str | None = None,
    resource_version: int | str | None = None,
    extra_spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    routes = [
        {"destination": {"host": name, "subset": f"v{i + 1}"}, "weight": weight}
        for i, weight in enumerate(weights)
    ]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": metadata,
        "spec": {"hosts": [name], "http": [{"route": routes}], **(extra_spec or {})},
    }


def destination_rule(name: str = "users", subsets: Sequence[str] = ("v1", "v2")) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": name},
        "spec": {"host": name, "subsets": [{"name": s, "labels": {"version": s}} for s in subsets]},
    }


@dataclass
class Harness:
    store: SqliteStore
    service: PolicyService
    registry: StubRegistry
    notifier: Notifier
    key: ec.EllipticCurvePrivateKey
    verifier: TokenVerifier
    clock: FakeClock
    data_dir: Path
    tokens: dict[Role, str] = field(default_factory=dict)

    def token(
        self, role: Role = Role.ADMIN, *, subject: str = "tester", ttl: timedelta = timedelta(hours=1)
    ) -> str:
        return mint_token(self.key, role=role, subject=subject, now=self.clock(), ttl=ttl)

    def fingerprint(self) -> tuple[int, list[tuple[ResourceKey, Any, int]], list[Any]]:
        """The store's revision, live resources and every history: equal means nothing was written."""
        resources = self.store.list_resources()
        histories = [self.store.history(r.key) for r in resources]
        return self.store.revision(), [(r.key, r.spec, r.resource_version) for r in resources], histories


@contextmanager
def harness(tmp_path: Path) -> Iterator[Harness]:
    clock = FakeClock()
    key = load_or_create_signing_key(tmp_path)
    registry = StubRegistry()
    notifier = Notifier()
    with SqliteStore(tmp_path / STORE_FILE) as store:
        service = PolicyService(store, registry=registry, notify=notifier, clock=clock)
        yield Harness(
            store,
            service,
            registry,
            notifier,
            key,
            TokenVerifier(key.public_key(), clock=clock),
            clock,
            tmp_path,
        )


def register_sidecar(registry: StubRegistry) -> None:
    registry.records.append(SidecarStub())
