"""DestinationRule: subsets of a service and the traffic policy for calls to it.

```yaml
spec:
  host: users
  trafficPolicy:                       # for the whole service; a subset may have its own
    loadBalancer:
      simple: LEAST_REQUEST            # ROUND_ROBIN | LEAST_REQUEST | RANDOM, or:
      # consistentHash: {httpHeaderName: x-user-id, ringHash: {minimumRingSize: 1024}}
    connectionPool:
      http: {http2MaxRequests: 100, maxRequestsPerConnection: 0, http1MaxPendingRequests: 10, maxRetries: 3}
      tcp: {maxConnections: 10, connectTimeout: 1s}
    outlierDetection:
      consecutive5xxErrors: 5          # or consecutiveErrors (its old name); consecutiveGatewayErrors
      interval: 10s
      baseEjectionTime: 30s
      maxEjectionTime: 5m              # mesh-native: the cap on baseEjectionTime * times ejected
      maxEjectionPercent: 50
      successRateEjection:             # mesh-native, gRFC A50 success-rate ejection
        stdevFactor: 1.9               # the factor itself (A50/Envoy write 1900 for 1.9)
        enforcementPercentage: 100
        minimumHosts: 5
        requestVolume: 100
      failurePercentageEjection:       # mesh-native, gRFC A50 failure-percentage ejection
        threshold: 85
        enforcementPercentage: 100
        minimumHosts: 5
        requestVolume: 50
    circuitBreaker:                    # mesh-native: closed/open/half-open for the whole destination
      consecutiveFailures: 10          # failures in a row (UNAVAILABLE, DEADLINE_EXCEEDED, ...) → open
      openTime: 5s                     # fail fast this long, then let probes through
      halfOpenCalls: 3                 # probes; all succeed → closed, one fails → open again
    healthCheck:                       # mesh-native: active grpc.health.v1 checks of each endpoint
      interval: 5s
      timeout: 1s                      # at most the interval
      unhealthyThreshold: 2            # failed checks in a row → no new calls
      healthyThreshold: 1              # passed checks in a row → back
      serviceName: ""                  # the health service name asked about ("": the whole server)
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
```

Not supported (each refused with a reason): ``tls`` (mesh mTLS is automatic), ``portLevelSettings``,
locality settings, and the outlier knobs gRPC has no use for (``minHealthPercent``,
``splitExternalLocalOriginErrors``, ``consecutiveLocalOriginFailures``).
"""

from __future__ import annotations

from typing import Any

from control_plane.policy.fields import (
    INT32_MAX,
    Invalid,
    any_string,
    child,
    dns_label,
    duration,
    enum,
    fields,
    header_name,
    integer,
    item,
    labels,
    list_of,
    number,
    parse_duration,
    percentage,
    quoted,
    service_host,
)
from sidecar.wire_checks import CheckFailed, check_grpc_service

LOAD_BALANCERS = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM")
MAX_RING_SIZE = 8 * 1024 * 1024


def _consistent_hash(value: object, path: str) -> dict[str, Any]:
    other_keys = "only httpHeaderName is supported as the hash key"
    return fields(
        value,
        path,
        {
            "httpHeaderName": header_name,
            "ringHash": lambda v, p: fields(
                v, p, {"minimumRingSize": integer(1, MAX_RING_SIZE)}, required=("minimumRingSize",)
            ),
        },
        required=("httpHeaderName",),
        hints={
            "httpCookie": other_keys,
            "useSourceIp": other_keys,
            "httpQueryParameterName": other_keys,
            "maglev": "use ringHash",
            "minimumRingSize": "use ringHash: {minimumRingSize: N}",
        },
    )


def _load_balancer(value: object, path: str) -> dict[str, Any]:
    simple = enum(*LOAD_BALANCERS, hints={"LEAST_CONN": "it is the old name of LEAST_REQUEST"})
    return fields(
        value,
        path,
        {"simple": simple, "consistentHash": _consistent_hash},
        exactly_one=[("simple", "consistentHash")],
        hints={
            "localityLbSetting": "locality-aware balancing is not supported",
            "warmupDurationSecs": "slow start is not supported",
        },
    )


def _connection_pool(value: object, path: str) -> dict[str, Any]:
    def http(v: object, p: str) -> dict[str, Any]:
        return fields(
            v,
            p,
            {
                "http2MaxRequests": integer(1, INT32_MAX),
                "maxRequestsPerConnection": integer(0, INT32_MAX),
                "http1MaxPendingRequests": integer(0, INT32_MAX),
                "maxRetries": integer(0, INT32_MAX),
            },
        )

    def tcp(v: object, p: str) -> dict[str, Any]:
        return fields(v, p, {"maxConnections": integer(1, INT32_MAX), "connectTimeout": duration()})

    return fields(value, path, {"http": http, "tcp": tcp})


def _ejection_knobs(extra: dict[str, Any]) -> dict[str, Any]:
    return {
        **extra,
        "enforcementPercentage": percentage,
        "minimumHosts": integer(1, INT32_MAX),
        "requestVolume": integer(1, INT32_MAX),
    }


def _outlier_detection(value: object, path: str) -> dict[str, Any]:
    no_use = "gRPC outlier detection (gRFC A50) has no such setting"
    stdev = number(0, 100, exclusive_minimum=True, note="the factor itself, e.g. 1.9; not thousandths")
    result = fields(
        value,
        path,
        {
            "consecutive5xxErrors": integer(0, INT32_MAX),
            "consecutiveGatewayErrors": integer(0, INT32_MAX),
            "consecutiveErrors": integer(0, INT32_MAX),
            "interval": duration(),
            "baseEjectionTime": duration(),
            "maxEjectionTime": duration(),
            "maxEjectionPercent": integer(0, 100),
            "successRateEjection": lambda v, p: fields(v, p, _ejection_knobs({"stdevFactor": stdev})),
            "failurePercentageEjection": lambda v, p: fields(
                v, p, _ejection_knobs({"threshold": percentage})
            ),
        },
        at_most_one=[("consecutive5xxErrors", "consecutiveErrors")],
        hints={
            "minHealthPercent": no_use,
            "splitExternalLocalOriginErrors": no_use,
            "consecutiveLocalOriginFailures": no_use,
        },
    )
    if "baseEjectionTime" in result and "maxEjectionTime" in result:
        base, cap = parse_duration(result["baseEjectionTime"]), parse_duration(result["maxEjectionTime"])
        if cap < base:
            raise Invalid(
                child(path, "maxEjectionTime"),
                f"must not be shorter than baseEjectionTime ({quoted(result['baseEjectionTime'])})",
            )
    return result


def _circuit_breaker(value: object, path: str) -> dict[str, Any]:
    return fields(
        value,
        path,
        {
            "consecutiveFailures": integer(1, INT32_MAX),
            "openTime": duration(),
            "halfOpenCalls": integer(1, INT32_MAX),
        },
    )


def _health_service(value: object, path: str) -> str:
    text = any_string(value, path)
    if text:
        try:
            check_grpc_service(text, path)
        except CheckFailed as exc:
            raise Invalid(path, exc.reason) from None
    return text


def _health_check(value: object, path: str) -> dict[str, Any]:
    result = fields(
        value,
        path,
        {
            "interval": duration(),
            "timeout": duration(),
            "unhealthyThreshold": integer(1, INT32_MAX),
            "healthyThreshold": integer(1, INT32_MAX),
            "serviceName": _health_service,
        },
    )
    interval = parse_duration(result.get("interval", "5s"))
    if "timeout" in result and parse_duration(result["timeout"]) > interval:
        raise Invalid(
            child(path, "timeout"),
            f"must not be longer than the interval ({quoted(result.get('interval', '5s'))})",
        )
    return result


def _traffic_policy(value: object, path: str) -> dict[str, Any]:
    return fields(
        value,
        path,
        {
            "loadBalancer": _load_balancer,
            "connectionPool": _connection_pool,
            "outlierDetection": _outlier_detection,
            "circuitBreaker": _circuit_breaker,
            "healthCheck": _health_check,
        },
        hints={
            "tls": "mTLS between sidecars is automatic (see PeerAuthentication)",
            "portLevelSettings": "set the policy for the whole service or a subset",
        },
    )


def _subset(value: object, path: str) -> dict[str, Any]:
    return fields(
        value,
        path,
        {
            "name": dns_label,
            "labels": labels(min_items=1, empty_hint="a subset selects endpoints by their labels"),
            "trafficPolicy": _traffic_policy,
        },
        required=("name", "labels"),
    )


def _subsets(value: object, path: str) -> list[dict[str, Any]]:
    subsets: list[dict[str, Any]] = list_of(_subset, min_items=1, empty_hint="omit subsets instead")(
        value, path
    )
    seen: dict[str, int] = {}
    for index, subset in enumerate(subsets):
        name = subset["name"]
        if name in seen:
            raise Invalid(
                child(item(path, index), "name"),
                f"duplicate subset name {quoted(name)} (also [{seen[name]}])",
            )
        seen[name] = index
    return subsets


def validate_spec(value: object, path: str = "spec") -> dict[str, Any]:
    """The canonical DestinationRule spec, or Invalid naming the first problem."""
    return fields(
        value,
        path,
        {"host": service_host, "subsets": _subsets, "trafficPolicy": _traffic_policy},
        required=("host",),
        hints={
            "exportTo": "resources are visible across the mesh",
            "workloadSelector": "a DestinationRule applies to every caller of its host",
        },
    )
