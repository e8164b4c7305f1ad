"""DestinationRule: subsets, load balancing, connection pool and outlier detection."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.policy import validate
from tests.support.policy_docs import DELETE, check_error, doc, edit

SPEC: dict[str, Any] = {
    "host": "users",
    "trafficPolicy": {
        "loadBalancer": {"simple": "LEAST_REQUEST"},
        "connectionPool": {
            "http": {
                "http2MaxRequests": 100,
                "maxRequestsPerConnection": 0,
                "http1MaxPendingRequests": 10,
                "maxRetries": 3,
            },
            "tcp": {"maxConnections": 10, "connectTimeout": "1s"},
        },
        "outlierDetection": {
            "consecutive5xxErrors": 5,
            "consecutiveGatewayErrors": 3,
            "interval": "10s",
            "baseEjectionTime": "30s",
            "maxEjectionTime": "5m",
            "maxEjectionPercent": 50,
            "successRateEjection": {
                "stdevFactor": 1.9,
                "enforcementPercentage": 100,
                "minimumHosts": 5,
                "requestVolume": 100,
            },
            "failurePercentageEjection": {
                "threshold": 85,
                "enforcementPercentage": 100,
                "minimumHosts": 5,
                "requestVolume": 50,
            },
        },
        "circuitBreaker": {"consecutiveFailures": 10, "openTime": "5s", "halfOpenCalls": 3},
        "healthCheck": {
            "interval": "5s",
            "timeout": "1s",
            "unhealthyThreshold": 2,
            "healthyThreshold": 1,
            "serviceName": "test.Echo",
        },
    },
    "subsets": [
        {"name": "v1", "labels": {"version": "v1"}},
        {
            "name": "v2",
            "labels": {"version": "v2", "app.kubernetes.io/part-of": "demo"},
            "trafficPolicy": {
                "loadBalancer": {
                    "consistentHash": {"httpHeaderName": "x-user-id", "ringHash": {"minimumRingSize": 1024}}
                }
            },
        },
    ],
}

BASE = doc("DestinationRule", SPEC)
TP = "spec.trafficPolicy"
OD = "spec.trafficPolicy.outlierDetection"


def test_subsets_load_balancer_and_outlier_detection_are_valid() -> None:
    document = validate(BASE)
    assert document.spec == SPEC
    assert str(document.key) == "DestinationRule default/users"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec", {"host": "users"}),
        (f"{TP}.loadBalancer", {"simple": "ROUND_ROBIN"}),
        (f"{TP}.loadBalancer", {"simple": "RANDOM"}),
        (f"{TP}.loadBalancer", {"consistentHash": {"httpHeaderName": "x-user-id"}}),
        (OD, {"consecutiveErrors": 5}),
        (OD, {}),
        (f"{OD}.maxEjectionPercent", 0),
        (f"{OD}.maxEjectionPercent", 100),
        (f"{OD}.successRateEjection", {"stdevFactor": 1}),
        (f"{OD}.failurePercentageEjection", {"threshold": 0}),
        (TP, {}),
        (f"{TP}.circuitBreaker", {}),
        (f"{TP}.circuitBreaker", {"openTime": "250ms"}),
        (f"{TP}.healthCheck", {}),
        (f"{TP}.healthCheck", {"timeout": "5s"}),
        (f"{TP}.healthCheck.serviceName", ""),
    ],
)
def test_valid_variants(path: str, value: Any) -> None:
    validate(edit(BASE, path, value))


BAD: list[tuple[str, Any, str, str]] = [
    # health checks (mesh-native)
    (f"{TP}.healthCheck.timeout", "6s", f"{TP}.healthCheck.timeout", 'longer than the interval ("5s")'),
    (f"{TP}.healthCheck.unhealthyThreshold", 0, f"{TP}.healthCheck.unhealthyThreshold", "at least 1"),
    (f"{TP}.healthCheck.serviceName", "a/b", f"{TP}.healthCheck.serviceName", "not a gRPC service name"),
    (f"{TP}.healthCheck.path", "/healthz", f"{TP}.healthCheck.path", "field not supported"),
    # circuit breaker (mesh-native)
    (f"{TP}.circuitBreaker.consecutiveFailures", 0, f"{TP}.circuitBreaker.consecutiveFailures", "at least 1"),
    (f"{TP}.circuitBreaker.halfOpenCalls", 0, f"{TP}.circuitBreaker.halfOpenCalls", "at least 1"),
    (f"{TP}.circuitBreaker.openTime", "5", f"{TP}.circuitBreaker.openTime", "duration"),
    (f"{TP}.circuitBreaker.failureRatio", 0.5, f"{TP}.circuitBreaker.failureRatio", "field not supported"),
    ("spec.host", DELETE, "spec.host", "=required"),
    ("spec.host", "*", "spec.host", "wildcard hosts are not supported"),
    ("spec.host", ["users"], "spec.host", "must be a string, got a list"),
    ("spec.exportTo", ["."], "spec.exportTo", "field not supported"),
    ("spec.workloadSelector", {}, "spec.workloadSelector", "field not supported"),
    # subsets
    ("spec.subsets", [], "spec.subsets", "must not be empty"),
    ("spec.subsets[1].name", "v1", "spec.subsets[1].name", 'duplicate subset name "v1" (also [0])'),
    ("spec.subsets[0].name", DELETE, "spec.subsets[0].name", "=required"),
    ("spec.subsets[0].name", "V1", "spec.subsets[0].name", "not a valid name"),
    ("spec.subsets[0].name", "v" * 64, "spec.subsets[0].name", "at most 63"),
    ("spec.subsets[0].labels", DELETE, "spec.subsets[0].labels", "=required"),
    ("spec.subsets[0].labels", {}, "spec.subsets[0].labels", "must not be empty"),
    (
        "spec.subsets[0].labels",
        {"version": 2},
        "spec.subsets[0].labels.version",
        "must be a string, got the number 2",
    ),
    ("spec.subsets[0].labels", {"version": "v 1"}, "spec.subsets[0].labels.version", "not a label value"),
    ("spec.subsets[0].labels", {"-version": "v1"}, 'spec.subsets[0].labels["-version"]', "not a label key"),
    ("spec.subsets[0].labels", ["version=v1"], "spec.subsets[0].labels", "must be a mapping"),
    (
        "spec.subsets[0].trafficPolicy",
        {"tls": {}},
        "spec.subsets[0].trafficPolicy.tls",
        "mTLS between sidecars is automatic",
    ),
    # load balancer
    (f"{TP}.loadBalancer", {}, f"{TP}.loadBalancer", "needs one of simple or consistentHash"),
    (
        f"{TP}.loadBalancer",
        {"simple": "RANDOM", "consistentHash": {"httpHeaderName": "x"}},
        f"{TP}.loadBalancer",
        "simple and consistentHash cannot be used together",
    ),
    (f"{TP}.loadBalancer.simple", "LEAST_CONN", f"{TP}.loadBalancer.simple", "old name of LEAST_REQUEST"),
    (
        f"{TP}.loadBalancer.simple",
        "PASSTHROUGH",
        f"{TP}.loadBalancer.simple",
        '=must be one of ROUND_ROBIN, LEAST_REQUEST or RANDOM, got "PASSTHROUGH"',
    ),
    (f"{TP}.loadBalancer.simple", "round_robin", f"{TP}.loadBalancer.simple", "must be one of"),
    (f"{TP}.loadBalancer.localityLbSetting", {}, f"{TP}.loadBalancer.localityLbSetting", "not supported"),
    (
        f"{TP}.loadBalancer",
        {"consistentHash": {}},
        f"{TP}.loadBalancer.consistentHash.httpHeaderName",
        "=required",
    ),
    (
        f"{TP}.loadBalancer",
        {"consistentHash": {"httpHeaderName": "X-User"}},
        f"{TP}.loadBalancer.consistentHash.httpHeaderName",
        "lower-case",
    ),
    (
        f"{TP}.loadBalancer",
        {"consistentHash": {"useSourceIp": True}},
        f"{TP}.loadBalancer.consistentHash.useSourceIp",
        "only httpHeaderName is supported",
    ),
    (
        f"{TP}.loadBalancer",
        {"consistentHash": {"httpHeaderName": "x", "ringHash": {"minimumRingSize": 0}}},
        f"{TP}.loadBalancer.consistentHash.ringHash.minimumRingSize",
        "at least 1",
    ),
    (
        f"{TP}.loadBalancer",
        {"consistentHash": {"httpHeaderName": "x", "ringHash": {}}},
        f"{TP}.loadBalancer.consistentHash.ringHash.minimumRingSize",
        "=required",
    ),
    (
        f"{TP}.loadBalancer",
        {"consistentHash": {"httpHeaderName": "x", "maglev": {}}},
        f"{TP}.loadBalancer.consistentHash.maglev",
        "use ringHash",
    ),
    # connection pool
    (
        f"{TP}.connectionPool.http.http2MaxRequests",
        0,
        f"{TP}.connectionPool.http.http2MaxRequests",
        "at least 1",
    ),
    (
        f"{TP}.connectionPool.http.http1MaxPendingRequests",
        -1,
        f"{TP}.connectionPool.http.http1MaxPendingRequests",
        "at least 0",
    ),
    (
        f"{TP}.connectionPool.http.maxRetries",
        "3",
        f"{TP}.connectionPool.http.maxRetries",
        "must be an integer",
    ),
    (
        f"{TP}.connectionPool.http.maxRetries",
        2**31,
        f"{TP}.connectionPool.http.maxRetries",
        "at most 2147483647",
    ),
    (
        f"{TP}.connectionPool.http.idleTimeout",
        "1m",
        f"{TP}.connectionPool.http.idleTimeout",
        "field not supported",
    ),
    (f"{TP}.connectionPool.tcp.maxConnections", 0, f"{TP}.connectionPool.tcp.maxConnections", "at least 1"),
    (
        f"{TP}.connectionPool.tcp.connectTimeout",
        "soon",
        f"{TP}.connectionPool.tcp.connectTimeout",
        "is not a duration",
    ),
    (
        f"{TP}.connectionPool.tcp.tcpKeepalive",
        {},
        f"{TP}.connectionPool.tcp.tcpKeepalive",
        "field not supported",
    ),
    (f"{TP}.connectionPool.grpc", {}, f"{TP}.connectionPool.grpc", "field not supported"),
    (
        f"{TP}.connectionPool.http.maxRequestsPerConnection",
        -1,
        f"{TP}.connectionPool.http.maxRequestsPerConnection",
        "at least 0",
    ),
    # outlier detection
    (f"{OD}.consecutiveErrors", 5, OD, "consecutive5xxErrors and consecutiveErrors cannot be used together"),
    (f"{OD}.consecutive5xxErrors", -1, f"{OD}.consecutive5xxErrors", "at least 0"),
    (f"{OD}.consecutiveGatewayErrors", 1.5, f"{OD}.consecutiveGatewayErrors", "must be an integer"),
    (f"{OD}.interval", "0ms", f"{OD}.interval", "at least 1ms"),
    (f"{OD}.baseEjectionTime", 30, f"{OD}.baseEjectionTime", "must be a duration string"),
    (
        f"{OD}.maxEjectionTime",
        "10s",
        f"{OD}.maxEjectionTime",
        'must not be shorter than baseEjectionTime ("30s")',
    ),
    (f"{OD}.maxEjectionPercent", 101, f"{OD}.maxEjectionPercent", "at most 100"),
    (f"{OD}.maxEjectionPercent", -5, f"{OD}.maxEjectionPercent", "at least 0"),
    (
        f"{OD}.minHealthPercent",
        50,
        f"{OD}.minHealthPercent",
        "gRPC outlier detection (gRFC A50) has no such setting",
    ),
    (
        f"{OD}.splitExternalLocalOriginErrors",
        True,
        f"{OD}.splitExternalLocalOriginErrors",
        "field not supported",
    ),
    (
        f"{OD}.successRateEjection.stdevFactor",
        1900,
        f"{OD}.successRateEjection.stdevFactor",
        "not thousandths",
    ),
    (f"{OD}.successRateEjection.stdevFactor", 0, f"{OD}.successRateEjection.stdevFactor", "greater than 0"),
    (
        f"{OD}.successRateEjection.enforcementPercentage",
        120,
        f"{OD}.successRateEjection.enforcementPercentage",
        "at most 100",
    ),
    (f"{OD}.successRateEjection.minimumHosts", 0, f"{OD}.successRateEjection.minimumHosts", "at least 1"),
    (f"{OD}.successRateEjection.requestVolume", 0, f"{OD}.successRateEjection.requestVolume", "at least 1"),
    (f"{OD}.successRateEjection.threshold", 85, f"{OD}.successRateEjection.threshold", "field not supported"),
    (
        f"{OD}.failurePercentageEjection.threshold",
        101,
        f"{OD}.failurePercentageEjection.threshold",
        "at most 100",
    ),
    (
        f"{OD}.failurePercentageEjection.threshold",
        -1,
        f"{OD}.failurePercentageEjection.threshold",
        "at least 0",
    ),
    (
        f"{OD}.failurePercentageEjection.stdevFactor",
        2,
        f"{OD}.failurePercentageEjection.stdevFactor",
        "field not supported",
    ),
    (
        f"{OD}.failurePercentageEjection.minimumHosts",
        -1,
        f"{OD}.failurePercentageEjection.minimumHosts",
        "at least 1",
    ),
    (f"{TP}.portLevelSettings", [], f"{TP}.portLevelSettings", "field not supported"),
]


@pytest.mark.parametrize(
    ("field", "value", "path", "reason"), BAD, ids=[f"{c[0]}={c[1]!r}"[:80] for c in BAD]
)
def test_invalid(field: str, value: Any, path: str, reason: str) -> None:
    check_error(edit(BASE, field, value), path, reason, label="DestinationRule users")
