"""The control plane's Prometheus metrics (HTTP `/metrics`, no token, like `/healthz`).

Everything but the push latency is read from the discovery service and its registry when
scraped; the push latency is a histogram observed after each pass that queued snapshots, from
the change it pushes (a store write's notify, or a registry change) to the snapshots queued.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from control_plane.ca_service import Issuer
from control_plane.discovery import DiscoveryServicer
from control_plane.registry import AckState

PUSH_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _DiscoveryCollector(Collector):
    def __init__(self, discovery: DiscoveryServicer) -> None:
        self.discovery = discovery

    def collect(self) -> Iterable[Metric]:
        return list(self._collect())

    def _collect(self) -> Iterator[Metric]:
        discovery = self.discovery
        records = discovery.registry.sidecars()
        connected = [r for r in records if r.connected]
        yield GaugeMetricFamily(
            "grpc_mesh_sidecars_connected", "Sidecars with a discovery stream open.", value=len(connected)
        )
        yield GaugeMetricFamily(
            "grpc_mesh_sidecars_known",
            "Sidecars the registry remembers, connected or not.",
            value=len(records),
        )
        states = GaugeMetricFamily(
            "grpc_mesh_sidecars_config_state",
            "Connected sidecars by the answer to the last snapshot sent (PENDING, ACK, NACK).",
            labels=["state"],
        )
        for state in AckState:
            states.add_metric([state.value], sum(1 for r in connected if r.state is state))
        yield states
        yield CounterMetricFamily(
            "grpc_mesh_pushes",
            "Snapshots pushed after a change (first snapshots excluded).",
            value=discovery.pushes,
        )
        yield CounterMetricFamily(
            "grpc_mesh_push_failures",
            "Push passes that failed (each is retried).",
            value=discovery.failed_passes,
        )
        yield CounterMetricFamily("grpc_mesh_acks", "Acks received from sidecars.", value=discovery.acks)
        yield CounterMetricFamily("grpc_mesh_nacks", "Nacks received from sidecars.", value=discovery.nacks)


class _CACollector(Collector):
    def __init__(self, issuer: Issuer) -> None:
        self.issuer = issuer

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "grpc_mesh_ca_csrs_signed",
            "Certificate signing requests signed by the CA.",
            value=self.issuer.signed,
        )
        refused = CounterMetricFamily(
            "grpc_mesh_ca_csrs_refused",
            "Certificate signing requests refused, by gRPC status (nothing issued).",
            labels=["grpc_code"],
        )
        for code, count in sorted(self.issuer.refused.items()):
            refused.add_metric([code], count)
        yield refused


class ControlPlaneMetrics:
    """The control plane's own registry (not the process-global one)."""

    def __init__(self, discovery: DiscoveryServicer, issuer: Issuer | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.push_latency = Histogram(
            "grpc_mesh_push_latency_seconds",
            "From a change (store write or registry change) to the snapshots it changed queued.",
            registry=self.registry,
            buckets=PUSH_BUCKETS_SECONDS,
        )
        self.registry.register(_DiscoveryCollector(discovery))
        if issuer is not None:
            self.registry.register(_CACollector(issuer))
        discovery.on_push = self.push_latency.observe

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
