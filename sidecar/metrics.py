"""Prometheus metrics of a sidecar (admin `/metrics`), with Istio's standard names and labels.

Every call the relay finishes is recorded once, in `CallMetrics.record`: `istio_requests_total`,
`istio_request_duration_milliseconds` and `istio_request_bytes`/`istio_response_bytes` (the
DATA payload bytes each way, gRPC message prefixes included). The labelled children of the four
metrics are bound once per distinct label set and cached in a dict, so recording a call is a dict
lookup, one counter increment and three histogram observations.

Cardinality is bounded: the labels are per workload, version and status, never per call; each
label takes at most `MAX_VALUES` distinct values and the rest collapse to "unknown".

The mesh's own counters (`Stats.counters`), the applied config version, the discovery state and
the certificate's expiry are read when scraped (`MeshCollector`): they cost nothing per call.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.config import Address, ServiceEntry
from sidecar.stats import Stats

# Istio's default buckets for request duration (ms) and sizes (bytes).
DURATION_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
    1800000, 3600000,
)  # fmt: skip
BYTES_BUCKETS: tuple[float, ...] = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000)

LABELS = (
    "reporter",
    "source_workload",
    "destination_service",
    "destination_version",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "connection_security_policy",
)
UNKNOWN = "unknown"
MAX_VALUES = 256  # distinct values per label (workloads, services, versions); more read "unknown"
MAX_CACHED = 4096  # raw label keys remembered; past it a call is still recorded, just not cached

_T = TypeVar("_T")
_REPORTER = {"outbound": "source", "inbound": "destination"}
_SECURITY = {"outbound": "none", "inbound": "mutual_tls"}
_STATUSES = {code: str(code) for code in range(17)}


def workload_of(spiffe_id: str | None) -> str:
    """The workload (service account) named by a SPIFFE ID `spiffe://td/ns/NS/sa/NAME`."""
    if not spiffe_id:
        return UNKNOWN
    parts = spiffe_id.split("/")
    if len(parts) == 7 and parts[0] == "spiffe:" and parts[3] == "ns" and parts[5] == "sa" and parts[6]:
        return parts[6]
    return UNKNOWN


class _Bounded:
    """The values one label has taken, at most `limit`; later new values read "unknown"."""

    __slots__ = ("limit", "values")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.values: set[str] = set()

    def __call__(self, value: str) -> str:
        if not value:
            return UNKNOWN
        if value in self.values:
            return value
        if len(self.values) >= self.limit:
            return UNKNOWN
        self.values.add(value)
        return value


_Children = tuple[Any, Any, Any, Any]  # the bound counter and three histograms of one label set
_Key = tuple[str, str, str, str | None, int, bool]


class CallMetrics:
    """The per-call Istio metrics of one sidecar, in its own registry."""

    def __init__(
        self, registry: CollectorRegistry, *, workload: str, version: str, max_values: int = MAX_VALUES
    ) -> None:
        self.workload = workload or UNKNOWN  # this sidecar's service: the source of its outbound calls
        self.version = version or UNKNOWN  # its `version` label: the destination version inbound
        self.requests = Counter(
            "istio_requests_total", "Requests handled by the sidecar.", LABELS, registry=registry
        )
        self.duration = Histogram(
            "istio_request_duration_milliseconds",
            "Request duration through the sidecar, in milliseconds.",
            LABELS,
            registry=registry,
            buckets=DURATION_BUCKETS_MS,
        )
        self.request_bytes = Histogram(
            "istio_request_bytes",
            "Request body size (DATA payload bytes), per request.",
            LABELS,
            registry=registry,
            buckets=BYTES_BUCKETS,
        )
        self.response_bytes = Histogram(
            "istio_response_bytes",
            "Response body size (DATA payload bytes), per request.",
            LABELS,
            registry=registry,
            buckets=BYTES_BUCKETS,
        )
        self._workloads = _Bounded(max_values)
        self._services = _Bounded(max_values)
        self._versions = _Bounded(max_values)
        self._children: dict[_Key, _Children] = {}
        # The services of the snapshot in force (endpoints with their labels), when there is one.
        self.services: Callable[[], Mapping[str, ServiceEntry]] = dict
        self._seen: object = None
        self._endpoint_versions: dict[Address, str] = {}
        self._pool_versions: dict[object, str] = {}

    def version_of(self, pool: Any) -> str:
        """The version label of the endpoint an outbound call was sent to (`pool.address`)."""
        services = self.services()
        if services is not self._seen:  # a new snapshot: its endpoints' labels
            self._seen = services
            self._endpoint_versions = {
                ep.address: ep.labels.get("version", "")
                for entry in services.values()
                for ep in entry.endpoints
            }
            self._pool_versions = {}
        version = self._pool_versions.get(pool)
        if version is None:
            version = self._endpoint_versions.get(pool.address) or UNKNOWN
            if len(self._pool_versions) < MAX_CACHED:
                self._pool_versions[pool] = version
        return version

    def record(
        self,
        direction: str,
        service: str,
        version: str,
        peer: str | None,
        status: int,
        millis: float,
        request_bytes: int,
        response_bytes: int,
        responded: bool,
    ) -> None:
        key = (direction, service, version, peer, status, responded)
        children = self._children.get(key)
        if children is None:
            children = self._bind(key)
        requests, duration, sent, received = children
        requests.inc()
        duration.observe(millis)
        sent.observe(request_bytes)
        received.observe(response_bytes)

    def _bind(self, key: _Key) -> _Children:
        direction, service, version, peer, status, responded = key
        inbound = direction == "inbound"
        labels = (
            _REPORTER.get(direction, UNKNOWN),
            self._workloads(workload_of(peer) if inbound else self.workload),
            self._services(self.workload if inbound else service),
            self._versions(self.version if inbound else version),
            "grpc",
            "200" if responded else "0",
            _STATUSES.get(status, UNKNOWN),
            _SECURITY.get(direction, UNKNOWN),
        )
        children = (
            self.requests.labels(*labels),
            self.duration.labels(*labels),
            self.request_bytes.labels(*labels),
            self.response_bytes.labels(*labels),
        )
        if len(self._children) < MAX_CACHED:
            self._children[key] = children
        return children


_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_]+")


def _counter_name(name: str) -> tuple[str, str]:
    """A Stats counter name → (metric name, direction label). "outbound.not_grpc" →
    ("grpc_mesh_not_grpc", "outbound")."""
    direction, dot, rest = name.partition(".")
    if not dot or direction not in ("inbound", "outbound"):
        direction, rest = "", name
    return "grpc_mesh_" + _NAME_UNSAFE.sub("_", rest).strip("_").lower(), direction


@dataclass
class MeshState:
    """What MeshCollector reads at scrape time; each callable is cheap."""

    stats: Stats
    config_version: Callable[[], str]
    discovery: Callable[[], Any] = lambda: None  # the DiscoveryClient, when there is one
    applies: Callable[[], tuple[int, int]] = lambda: (0, 0)  # (snapshots applied, refused by apply)
    cert_not_after: datetime | None = None


class MeshCollector(Collector):
    """The sidecar's own counters and state, read when scraped."""

    def __init__(self, state: MeshState) -> None:
        self.state = state

    def collect(self) -> Iterable[Metric]:
        return list(self._collect())

    def _collect(self) -> Iterator[Metric]:
        state = self.state
        families: dict[str, CounterMetricFamily] = {}
        for name, value in sorted(state.stats.counters.items()):
            metric, direction = _counter_name(name)
            family = families.get(metric)
            if family is None:
                family = families[metric] = CounterMetricFamily(
                    metric,
                    f"Sidecar events counted as '{name.partition('.')[2] or name}'.",
                    labels=["direction"],
                )
            family.add_metric([direction], value)
        yield from families.values()
        info = GaugeMetricFamily(
            "grpc_mesh_config_info", "The config snapshot in force (value 1).", labels=["version"]
        )
        info.add_metric([state.config_version() or "none"], 1)
        yield info
        applied, refused = state.applies()
        yield CounterMetricFamily(
            "grpc_mesh_config_applied", "Pushed snapshots applied (Acked).", value=applied
        )
        yield CounterMetricFamily(
            "grpc_mesh_config_apply_failed",
            "Pushed snapshots whose apply failed (Nacked).",
            value=refused,
        )
        discovery = state.discovery()
        if discovery is not None:
            yield GaugeMetricFamily(
                "grpc_mesh_discovery_connected",
                "1 while the discovery stream to the control plane is up.",
                value=1 if discovery.connected else 0,
            )
            yield CounterMetricFamily(
                "grpc_mesh_discovery_connects",
                "Discovery streams that delivered at least one snapshot.",
                value=discovery.connects,
            )
            yield GaugeMetricFamily(
                "grpc_mesh_config_nacked",
                "1 when the last snapshot received was refused (Nacked), whatever the reason.",
                value=0 if discovery.last_nack is None else 1,
            )
        if state.cert_not_after is not None:
            yield GaugeMetricFamily(
                "grpc_mesh_certificate_expiry_seconds",
                "Seconds until the sidecar's workload certificate expires.",
                value=state.cert_not_after.timestamp() - time.time(),
            )


class SidecarMetrics:
    """A sidecar's registry (its own, never the process-global one): the per-call metrics, the
    mesh collector, and the count of pushed snapshots applied or refused."""

    def __init__(
        self,
        *,
        workload: str,
        version: str,
        stats: Stats,
        config_version: Callable[[], str],
        services: Callable[[], Mapping[str, ServiceEntry]],
        discovery: Callable[[], Any],
        cert: Path | None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.calls = CallMetrics(self.registry, workload=workload, version=version)
        self.calls.services = services
        self.applied = 0
        self.apply_failed = 0
        not_after = None
        if cert is not None:
            with contextlib.suppress(OSError, ValueError):
                not_after = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc
        state = MeshState(
            stats,
            config_version,
            discovery=discovery,
            applies=lambda: (self.applied, self.apply_failed),
            cert_not_after=not_after,
        )
        self.registry.register(MeshCollector(state))

    def counting(self, apply: Callable[[_T], None]) -> Callable[[_T], None]:
        """`apply` (the discovery client's), counting the snapshots it applies and refuses."""

        def counted(discovered: _T) -> None:
            try:
                apply(discovered)
            except BaseException:
                self.apply_failed += 1
                raise
            self.applied += 1

        return counted

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
