"""sidecar.metrics: Istio's names and labels, values after recorded calls, bounded cardinality,
and the mesh's own counters and state."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from control_plane.ca import CertificateAuthority, issue_workload_files
from control_plane.spiffe import SpiffeId
from sidecar.app import Sidecar
from sidecar.config import Address, Endpoint, ServiceEntry, parse_config
from sidecar.discovery import Discovered
from sidecar.metrics import LABELS, CallMetrics, MeshCollector, MeshState, workload_of
from sidecar.stats import Stats

PEER = "spiffe://cluster.local/ns/default/sa/frontend"


def samples(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of the registry's exposition, parsed back, by sample name."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    return sum(
        v for got, v in samples(registry).get(name, []) if all(got.get(k) == w for k, w in labels.items())
    )


def test_outbound_and_inbound_calls_carry_istios_labels() -> None:
    registry = CollectorRegistry()
    metrics = CallMetrics(registry, workload="frontend", version="v2")
    for _ in range(3):
        metrics.record("outbound", "users", "v1", None, 0, 2.0, 12, 30, True)
    metrics.record("outbound", "users", "v1", None, 5, 700.0, 12, 0, True)
    metrics.record("inbound", "ignored", "", PEER, 0, 3.0, 12, 30, True)

    requests = samples(registry)["istio_requests_total"]
    assert {frozenset(labels) for labels, _ in requests} == {frozenset(LABELS)}
    assert (
        {
            "reporter": "source",
            "source_workload": "frontend",
            "destination_service": "users",
            "destination_version": "v1",
            "request_protocol": "grpc",
            "response_code": "200",
            "grpc_response_status": "0",
            "connection_security_policy": "none",
        },
        3.0,
    ) in requests
    assert value(registry, "istio_requests_total", reporter="source", grpc_response_status="5") == 1
    inbound = [labels for labels, _ in requests if labels["reporter"] == "destination"]
    assert inbound == [
        {
            "reporter": "destination",
            "source_workload": "frontend",  # from the caller's SPIFFE ID
            "destination_service": "frontend",  # this sidecar's own service
            "destination_version": "v2",  # its own version label
            "request_protocol": "grpc",
            "response_code": "200",
            "grpc_response_status": "0",
            "connection_security_policy": "mutual_tls",
        }
    ]

    ok = {"reporter": "source", "grpc_response_status": "0"}
    assert value(registry, "istio_request_duration_milliseconds_count", **ok) == 3
    assert value(registry, "istio_request_duration_milliseconds_sum", **ok) == pytest.approx(6.0)
    assert value(registry, "istio_request_duration_milliseconds_bucket", le="1.0", **ok) == 0
    assert value(registry, "istio_request_duration_milliseconds_bucket", le="5.0", **ok) == 3
    assert value(registry, "istio_request_duration_milliseconds_bucket", le="+Inf", **ok) == 3
    assert value(registry, "istio_request_duration_milliseconds_bucket", le="+Inf") == 5
    assert value(registry, "istio_request_duration_milliseconds_bucket", le="500.0") == 4  # not the 700 ms
    assert value(registry, "istio_request_bytes_sum", **ok) == 36
    assert value(registry, "istio_response_bytes_sum", **ok) == 90
    assert value(registry, "istio_response_bytes_bucket", le="100.0", **ok) == 3


def test_a_call_ended_before_any_response_has_response_code_0() -> None:
    registry = CollectorRegistry()
    metrics = CallMetrics(registry, workload="frontend", version="v1")
    metrics.record("outbound", "users", "v1", None, 1, 5.0, 0, 0, False)
    assert value(registry, "istio_requests_total", response_code="0", grpc_response_status="1") == 1


def test_label_values_are_bounded_and_the_rest_read_unknown() -> None:
    registry = CollectorRegistry()
    metrics = CallMetrics(registry, workload="frontend", version="v1", max_values=3)
    for i in range(50):
        metrics.record("outbound", f"service-{i}", f"v{i}", None, 0, 1.0, 1, 1, True)
        metrics.record(
            "inbound", "x", "", f"spiffe://cluster.local/ns/default/sa/caller-{i}", 0, 1.0, 1, 1, True
        )
    metrics.record("outbound", "users", "", None, 99, 1.0, 1, 1, True)  # not a gRPC code
    requests = samples(registry)["istio_requests_total"]
    services = {labels["destination_service"] for labels, _ in requests}
    sources = {labels["source_workload"] for labels, _ in requests}
    assert len(services) <= 4 and "unknown" in services
    assert len(sources) <= 4 and "unknown" in sources
    assert {labels["grpc_response_status"] for labels, _ in requests} == {"0", "unknown"}
    assert sum(v for _, v in requests) == 101  # every call is still counted
    assert len(requests) <= 3 * 3 + 3 * 3 + 2


def test_workload_of_a_spiffe_id() -> None:
    assert workload_of(PEER) == "frontend"
    assert workload_of(None) == "unknown"
    assert workload_of("") == "unknown"
    assert workload_of("spiffe://cluster.local/something/else") == "unknown"


@dataclass(eq=False)  # hashed by identity, like an UpstreamPool
class _Pool:
    address: Address


def test_the_outbound_version_is_the_picked_endpoints_label_and_follows_snapshots() -> None:
    registry = CollectorRegistry()
    metrics = CallMetrics(registry, workload="frontend", version="v1")
    a, b = Address("127.0.0.1", 7001), Address("127.0.0.1", 7002)
    services = {
        "users": ServiceEntry(
            "users", ("demo.v1.Users",), (Endpoint(a, {"version": "v1"}), Endpoint(b, {"app": "users"}))
        )
    }
    metrics.services = lambda: services
    pool_a, pool_b = _Pool(a), _Pool(b)
    assert metrics.version_of(pool_a) == "v1"
    assert metrics.version_of(pool_b) == "unknown"  # no version label
    assert metrics.version_of(_Pool(Address("127.0.0.1", 7003))) == "unknown"
    services = {"users": ServiceEntry("users", ("demo.v1.Users",), (Endpoint(a, {"version": "v3"}),))}
    assert metrics.version_of(pool_a) == "v3"


def test_mesh_counters_config_and_certificate() -> None:
    stats = Stats()
    stats.incr("outbound.not_grpc")
    stats.incr("outbound.not_grpc")
    stats.incr("inbound.not_grpc")
    stats.incr("outbound.retries", 4)
    registry = CollectorRegistry()
    registry.register(
        MeshCollector(
            MeshState(
                stats,
                lambda: "7-abc",
                applies=lambda: (5, 1),
                cert_not_after=lambda: datetime.fromtimestamp(datetime.now(UTC).timestamp() + 3600, UTC),
            )
        )
    )
    assert value(registry, "grpc_mesh_not_grpc_total", direction="outbound") == 2
    assert value(registry, "grpc_mesh_not_grpc_total", direction="inbound") == 1
    assert value(registry, "grpc_mesh_retries_total", direction="outbound") == 4
    assert samples(registry)["grpc_mesh_config_info"] == [({"version": "7-abc"}, 1.0)]
    assert value(registry, "grpc_mesh_config_applied_total") == 5
    assert value(registry, "grpc_mesh_config_apply_failed_total") == 1
    assert 3500 < value(registry, "grpc_mesh_certificate_expiry_seconds") <= 3600
    assert "grpc_mesh_discovery_connected" not in samples(registry)  # static mode: no discovery


def _sidecar(tmp_path: Path) -> Sidecar:
    ca = CertificateAuthority.create("cluster.local", now=datetime.now(UTC))
    files = issue_workload_files(ca, SpiffeId("cluster.local", "default", "client"), tmp_path)
    config = parse_config(
        {
            "service": "client",
            "labels": {"version": "v9"},
            "listeners": {"outbound": "127.0.0.1:0"},
            "control_plane": "127.0.0.1:15010",
            "tls": {"cert": str(files.cert), "key": str(files.key), "ca": str(files.ca)},
        }
    )
    return Sidecar(config, node_id="client-1")


def test_a_sidecar_has_its_own_registry_and_counts_what_discovery_applies(tmp_path: Path) -> None:
    async def scenario() -> None:
        sidecar = _sidecar(tmp_path)
        other = _sidecar(tmp_path / "other")
        assert sidecar.metrics.registry is not other.metrics.registry
        apply: Any = sidecar.metrics.counting(sidecar.apply)
        services = {
            "users": ServiceEntry(
                "users", ("demo.v1.Users",), (Endpoint(Address("127.0.0.1", 7001), {"version": "v1"}),)
            )
        }
        apply(Discovered("3-aaa", 3, services, ()))
        with pytest.raises(AttributeError):
            apply(object())  # not a snapshot: apply fails, the discovery client would Nack it
        registry = sidecar.metrics.registry
        assert value(registry, "grpc_mesh_config_applied_total") == 1
        assert value(registry, "grpc_mesh_config_apply_failed_total") == 1
        assert samples(registry)["grpc_mesh_config_info"] == [({"version": "3-aaa"}, 1.0)]
        assert value(registry, "grpc_mesh_certificate_expiry_seconds") > 0
        pool = sidecar.pools.get(Address("127.0.0.1", 7001), secure=True)
        assert sidecar.metrics.calls.version_of(pool) == "v1"
        assert sidecar.metrics.calls.version == "v9"
        await sidecar.pools.close()
        await other.pools.close()

    asyncio.run(scenario())
