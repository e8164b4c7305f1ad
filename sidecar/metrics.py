"""Prometheus metrics of a sidecar (admin `/metrics`), with Istio's standard names and labels.

Every call the relay finishes is recorded once, in `CallMetrics.record`: `istio_requests_total`,
`istio_request_duration_milliseconds` and `istio_request_bytes`/`istio_response_bytes` (the
DATA payload bytes each way, gRPC message prefixes included). Each distinct label set is bound
once to a `_Series` of plain counters, cached in a dict, so recording a call is a dict lookup and
a few integer adds (three bisects for the buckets); the exposition is built when scraped.

Cardinality is bounded: the labels are per workload, version and status, never per call; each
label takes at most `MAX_VALUES` distinct values and the rest collapse to "unknown".

The mesh's own counters (`Stats.counters`), the applied config version, the discovery state and
the certificate's expiry are read when scraped (`MeshCollector`), as are the outlier ejections,
connection-pool overflows and breaker states of each destination (`ClusterCollector`): they cost
nothing per call.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from cryptography import x509
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from sidecar.clusters import ClusterStates
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


class _Series:
    """One label set's request count and three histograms, as plain numbers: the relay and the
    scrape both run on the event loop, so no lock is needed (prometheus-client's own metrics
    take one per increment, which tripled the cost of recording a call)."""

    __slots__ = ("bytes_in", "bytes_in_sum", "bytes_out", "bytes_out_sum", "count", "millis", "millis_sum")

    def __init__(self) -> None:
        self.count = 0
        self.millis = [0] * (len(DURATION_BUCKETS_MS) + 1)  # per bucket, not cumulative; last: +Inf
        self.millis_sum = 0.0
        self.bytes_in = [0] * (len(BYTES_BUCKETS) + 1)
        self.bytes_in_sum = 0
        self.bytes_out = [0] * (len(BYTES_BUCKETS) + 1)
        self.bytes_out_sum = 0


_Labels = tuple[str, str, str, str, str, str, str, str]
_Key = tuple[str, str, str, str | None, int, bool]


_go_float = cast(Callable[[float], str], floatToGoString)  # untyped in prometheus-client
_DURATION_LE = tuple(_go_float(b) for b in (*DURATION_BUCKETS_MS, math.inf))
_BYTES_LE = tuple(_go_float(b) for b in (*BYTES_BUCKETS, math.inf))


def _buckets(bounds: tuple[str, ...], counts: list[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    seen = 0
    for bound, count in zip(bounds, counts, strict=True):
        seen += count
        out.append((bound, seen))
    return out


class CallMetrics(Collector):
    """The per-call Istio metrics of one sidecar, registered in the sidecar's own registry."""

    def __init__(
        self, registry: CollectorRegistry, *, workload: str, version: str, max_values: int = MAX_VALUES
    ) -> None:
        self.workload = workload or UNKNOWN  # this sidecar's service: the source of its outbound calls
        self.version = version or UNKNOWN  # its `version` label: the destination version inbound
        self._workloads = _Bounded(max_values)
        self._services = _Bounded(max_values)
        self._versions = _Bounded(max_values)
        self._series: dict[_Labels, _Series] = {}
        self._cache: dict[_Key, _Series] = {}  # raw label key → its series (several may share one)
        # The services of the snapshot in force (endpoints with their labels), when there is one.
        self.services: Callable[[], Mapping[str, ServiceEntry]] = dict
        self._seen: object = None
        self._endpoint_versions: dict[Address, str] = {}
        self._pool_versions: dict[object, str] = {}
        registry.register(self)

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
        series = self._cache.get(key)
        if series is None:
            series = self._bind(key)
        series.count += 1
        series.millis_sum += millis
        series.millis[bisect_left(DURATION_BUCKETS_MS, millis)] += 1
        series.bytes_in_sum += request_bytes
        series.bytes_in[bisect_left(BYTES_BUCKETS, request_bytes)] += 1
        series.bytes_out_sum += response_bytes
        series.bytes_out[bisect_left(BYTES_BUCKETS, response_bytes)] += 1

    def _bind(self, key: _Key) -> _Series:
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
            # A PERMISSIVE listener's plaintext callers have no peer identity.
            "none" if inbound and peer is None else _SECURITY.get(direction, UNKNOWN),
        )
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Series()
        if len(self._cache) < MAX_CACHED:
            self._cache[key] = series
        return series

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "istio_requests_total", "Requests handled by the sidecar.", labels=LABELS
        )
        duration = HistogramMetricFamily(
            "istio_request_duration_milliseconds",
            "Request duration through the sidecar, in milliseconds.",
            labels=LABELS,
        )
        sent = HistogramMetricFamily(
            "istio_request_bytes", "Request body size (DATA payload bytes), per request.", labels=LABELS
        )
        received = HistogramMetricFamily(
            "istio_response_bytes", "Response body size (DATA payload bytes), per request.", labels=LABELS
        )
        for labels, series in sorted(self._series.items()):
            values = list(labels)
            requests.add_metric(values, series.count)
            duration.add_metric(values, _buckets(_DURATION_LE, series.millis), series.millis_sum)
            sent.add_metric(values, _buckets(_BYTES_LE, series.bytes_in), series.bytes_in_sum)
            received.add_metric(values, _buckets(_BYTES_LE, series.bytes_out), series.bytes_out_sum)
        return [requests, duration, sent, received]


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
    cert_not_after: Callable[[], datetime | None] = lambda: None


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
        not_after = state.cert_not_after()
        if not_after is not None:
            yield GaugeMetricFamily(
                "grpc_mesh_certificate_expiry_seconds",
                "Seconds until the sidecar's workload certificate expires.",
                value=not_after.timestamp() - time.time(),
            )


class ClusterCollector(Collector):
    """Outlier ejections, connection-pool overflows and breaker states per destination cluster
    (sidecar.clusters), read when scraped."""

    def __init__(self, states: ClusterStates) -> None:
        self.states = states

    def collect(self) -> Iterable[Metric]:
        labels = ["destination_service", "destination_subset"]
        ejections = CounterMetricFamily(
            "grpc_mesh_outlier_ejections", "Endpoints ejected by outlier detection.", labels=labels
        )
        ejected = GaugeMetricFamily(
            "grpc_mesh_outlier_ejected", "Endpoints ejected by outlier detection now.", labels=labels
        )
        overflows = CounterMetricFamily(
            "grpc_mesh_overflows",
            "Calls failed fast: over a connectionPool limit (requests, pending) or the circuit open.",
            labels=[*labels, "limit"],
        )
        circuit = GaugeMetricFamily(
            "grpc_mesh_circuit_state",
            "The destination's breaker: 0 closed, 1 open, 2 half-open.",
            labels=labels,
        )
        for (service, subset), state in sorted(self.states.states.items(), key=lambda kv: str(kv[0])):
            values = [service, subset or ""]
            ejections.add_metric(values, state.ejections)
            ejected.add_metric(values, len(state.unavailable()))
            for kind, count in sorted(state.overflows.items()):
                overflows.add_metric([*values, kind], count)
            if state.breaker is not None:
                overflows.add_metric([*values, "circuit_open"], state.breaker.rejected)
                circuit.add_metric(values, int(state.breaker.state))
        return [ejections, ejected, overflows, circuit]


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
        cert: Path | Callable[[], datetime | None] | None,
        clusters: ClusterStates | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.calls = CallMetrics(self.registry, workload=workload, version=version)
        self.calls.services = services
        self.applied = 0
        self.apply_failed = 0
        # A file is read once; a certificate from the CA is asked for at each scrape (it rotates).
        expiry: datetime | None = None
        if isinstance(cert, Path):
            with contextlib.suppress(OSError, ValueError):
                expiry = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc
        not_after: Callable[[], datetime | None] = cert if callable(cert) else (lambda: expiry)
        state = MeshState(
            stats,
            config_version,
            discovery=discovery,
            applies=lambda: (self.applied, self.apply_failed),
            cert_not_after=not_after,
        )
        self.registry.register(MeshCollector(state))
        if clusters is not None:
            self.registry.register(ClusterCollector(clusters))

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
