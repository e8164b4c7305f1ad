"""What each sidecar is sent: a snapshot of just what it needs, versioned by its content.

For one sidecar, the snapshot holds:

- **services**: the services it may call, each with its endpoints (address, labels, identity).
  These are its declared dependencies (a dependency with no instance yet is still listed, with no
  endpoints) or, when it declares none, every service the registry knows — its own included.
  A dependency's VirtualServices can send calls to other hosts (route destinations, mirrors);
  those hosts are added too, so a route never points at a service the sidecar does not know.
- **trust**: the CA's trust bundle and the fingerprint of its signing certificate (`set_trust`),
  the same for every sidecar.
- **policies**, sorted by (kind, namespace, name):
  - outbound: `VirtualService`s whose `hosts` and `DestinationRule`s whose `host` name one of
    those services;
  - inbound (only for a sidecar with an inbound address): `PeerAuthentication`,
    `AuthorizationPolicy`, `RequestAuthentication` and `RateLimitPolicy` of its namespace, or of the mesh-wide
    namespace `mesh-system` (Istio's root namespace, under our name), whose
    `selector.matchLabels`, when present, all equal the sidecar's labels.

Host names: a service is named by its short name (`users`); a host written as a DNS name
(`users.default.svc.cluster.local`) matches by its first label, as the sidecar's router does.
Service names are mesh-wide for now: two namespaces with a service of the same name share it.

Reading the store: `SnapshotBuilder.load(store)` reads the revision, and the resources when the
revision moved (SQLite: blocking, so the discovery service calls it in a worker thread, once per
push pass and once per new stream); `build(record, registry, resources)` is pure CPU on the event
loop, so one push pass builds every sidecar's snapshot from the same revision.

Versions: `"<store revision>-<first 12 hex digits of sha256(content)>"`, where the content is the
snapshot's deterministic serialization with `version` and `store_revision` cleared. Two builds
with the same content have the same `content_hash`; the discovery service pushes only when that
changes, so a store change that does not concern a sidecar sends it nothing.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2
from mesh.v1 import discovery_pb2, resources_pb2

from control_plane.ca_source import Trust
from control_plane.registry import Registration, Registry, ServiceInfo, SidecarRecord
from control_plane.resources import Resource, ResourceKey, Store
from sidecar.wire_checks import is_name

MESH_NAMESPACE = "mesh-system"  # policies here apply to every namespace
OUTBOUND_KINDS = ("VirtualService", "DestinationRule")
INBOUND_KINDS = ("PeerAuthentication", "AuthorizationPolicy", "RequestAuthentication", "RateLimitPolicy")


def short_host(host: str) -> str:
    return host.split(".", 1)[0]


def content_hash(snapshot: discovery_pb2.Snapshot) -> str:
    """sha256 (hex, 12 digits) of everything in the snapshot but its version and revision."""
    content = discovery_pb2.Snapshot()
    content.CopyFrom(snapshot)
    content.version = ""
    content.store_revision = 0
    return hashlib.sha256(content.SerializeToString(deterministic=True)).hexdigest()[:12]


def version_hash(version: str) -> str:
    return version.partition("-")[2]


@dataclass(frozen=True, slots=True)
class Resources:
    """The store's policy resources at one revision, indexed for building snapshots."""

    revision: int
    by_key: Mapping[ResourceKey, Resource]
    by_host: Mapping[str, tuple[ResourceKey, ...]]  # outbound kinds, by the short hosts they name
    inbound: tuple[Resource, ...]
    protos: Mapping[ResourceKey, resources_pb2.Resource]


class SnapshotBuilder:
    """Builds snapshots; caches the store's resources per revision and the registry's services
    per generation. `load` may run in a worker thread (it only touches the resources cache, under
    a lock); `build` runs on the event loop, beside the registry."""

    def __init__(self) -> None:
        self._resources: Resources | None = None
        self._lock = threading.Lock()
        self._services: tuple[Registry, int, dict[str, ServiceInfo]] | None = None
        # Sidecars that need the same things get the same snapshot: one build per distinct need
        # per (resources, services) pair, however many sidecars share it.
        self._built_for: tuple[Resources, dict[str, ServiceInfo]] | None = None
        self._built: dict[tuple[object, ...], discovery_pb2.Snapshot] = {}
        self._trust: Trust | None = None

    def set_trust(self, trust: Trust) -> None:
        """The trust bundle and signing CA every snapshot carries from now on."""
        self._trust = trust
        self._built_for = None  # every snapshot changes

    def build(
        self, record: SidecarRecord | Registration, registry: Registry, resources: Resources
    ) -> discovery_pb2.Snapshot:
        """The snapshot of one sidecar, from `resources` (see `load`) and the registry as it is.
        Sidecars with the same needs get the same message object: callers must not modify it."""
        registration = record.registration if isinstance(record, SidecarRecord) else record
        services = self._services_of(registry)
        built_for = self._built_for
        if built_for is None or built_for[0] is not resources or built_for[1] is not services:
            self._built_for = (resources, services)
            self._built = {}
        need: tuple[object, ...] = (tuple(sorted(registration.dependencies)),)
        if registration.inbound_address:  # inbound policies select on namespace and labels
            need += (registration.namespace, tuple(sorted(registration.labels.items())))
        built = self._built.get(need)
        if built is None:
            built = self._built[need] = self._build(registration, services, resources)
        return built

    def _build(
        self, registration: Registration, services: dict[str, ServiceInfo], resources: Resources
    ) -> discovery_pb2.Snapshot:
        names = set(registration.dependencies) if registration.dependencies else set(services)
        policies: set[ResourceKey] = set()
        # A dependency's routes may lead to more hosts; follow them until nothing new appears.
        pending = sorted(names)
        while pending:
            host = pending.pop()
            for key in resources.by_host.get(host, ()):
                if key in policies:
                    continue
                policies.add(key)
                for target in _route_hosts(resources.by_key[key]):
                    if target not in names:
                        names.add(target)
                        pending.append(target)
        if registration.inbound_address:
            policies.update(r.key for r in resources.inbound if _applies_inbound(r, registration))

        snapshot = discovery_pb2.Snapshot(store_revision=resources.revision)
        for name in sorted(names):
            info = services.get(name)
            service = snapshot.services.add(name=name)
            if info is None:
                continue
            service.namespace = info.namespace
            service.grpc_services.extend(info.grpc_services)
            for endpoint in info.endpoints:
                service.endpoints.add(
                    address=endpoint.address, labels=endpoint.labels, identity=endpoint.identity
                )
        snapshot.policies.extend(resources.protos[key] for key in sorted(policies))
        if self._trust is not None:
            snapshot.trust_roots.extend(self._trust.roots_pem)
            snapshot.signing_ca = self._trust.signing_ca
        snapshot.version = f"{resources.revision}-{content_hash(snapshot)}"
        return snapshot

    def load(self, store: Store) -> Resources:
        """Read the store's revision, and its resources when the revision moved. Blocking."""
        with self._lock:
            return self._load(store)

    def _load(self, store: Store) -> Resources:
        # The revision first: a write landing between the two reads makes the content newer than
        # the revision claims, never older (so "applied revision N" is never an overstatement).
        revision = store.revision()
        if self._resources is not None and self._resources.revision == revision:
            return self._resources
        by_key: dict[ResourceKey, Resource] = {}
        by_host: dict[str, list[ResourceKey]] = {}
        inbound: list[Resource] = []
        for resource in store.list_resources():
            if resource.key.kind in OUTBOUND_KINDS:
                for host in sorted(_hosts(resource)):
                    by_host.setdefault(host, []).append(resource.key)
            elif resource.key.kind in INBOUND_KINDS:
                inbound.append(resource)
            else:
                continue
            by_key[resource.key] = resource
        self._resources = Resources(
            revision,
            by_key,
            {h: tuple(keys) for h, keys in by_host.items()},
            tuple(inbound),
            {key: to_proto(resource) for key, resource in by_key.items()},
        )
        return self._resources

    def _services_of(self, registry: Registry) -> dict[str, ServiceInfo]:
        # Keyed by the registry itself and its generation: grace expiry is announced by a
        # generation bump (Registry.expire), so a cached view never outlives a change.
        cached = self._services
        if cached is None or cached[0] is not registry or cached[1] != registry.generation:
            cached = self._services = (registry, registry.generation, registry.services())
        return cached[2]


def to_proto(resource: Resource) -> resources_pb2.Resource:
    message = resources_pb2.Resource(
        kind=resource.key.kind,
        namespace=resource.key.namespace,
        name=resource.key.name,
        resource_version=resource.resource_version,
    )
    spec = struct_pb2.Struct()
    spec.update(dict(resource.spec))
    message.spec.CopyFrom(spec)
    message.update_time.FromDatetime(resource.update_time)
    return message


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _hosts(resource: Resource) -> set[str]:
    """The services an outbound policy is about."""
    spec = resource.spec
    raw = _strings(spec.get("hosts")) if resource.key.kind == "VirtualService" else _strings(spec.get("host"))
    return {short_host(h) for h in raw if is_name(short_host(h))}


def _route_hosts(resource: Resource) -> Iterable[str]:
    """The hosts a VirtualService sends calls to (route destinations and mirrors)."""
    if resource.key.kind != "VirtualService":
        return ()
    hosts: set[str] = set()
    http = resource.spec.get("http")
    for rule in http if isinstance(http, list) else ():
        if not isinstance(rule, dict):
            continue
        routes = rule.get("route")
        for route in routes if isinstance(routes, list) else ():
            destination = route.get("destination") if isinstance(route, dict) else None
            if isinstance(destination, dict):
                hosts.update(short_host(h) for h in _strings(destination.get("host")))
        mirror = rule.get("mirror")
        if isinstance(mirror, dict):
            hosts.update(short_host(h) for h in _strings(mirror.get("host")))
    # Only names a sidecar accepts as a service name (the policy API validates hosts already).
    return sorted(h for h in hosts if is_name(h))


def _applies_inbound(resource: Resource, registration: Registration) -> bool:
    if resource.key.namespace not in (registration.namespace, MESH_NAMESPACE):
        return False
    selector = resource.spec.get("selector")
    if not isinstance(selector, dict):
        return True
    match_labels = selector.get("matchLabels")
    if not isinstance(match_labels, dict):
        return True
    return all(registration.labels.get(k) == v for k, v in match_labels.items())
