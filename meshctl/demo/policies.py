"""The policy documents the demo's story applies through the control plane's API: STRICT mutual
TLS for the namespace, a DestinationRule for users (subsets v1 and v2, outlier detection) and the
VirtualService of each step (weights, the `x-canary` header route, retries)."""

from __future__ import annotations

from typing import Any

ISTIO_API = "networking.istio.io/v1"
CANARY_ROUTE = "canary-testers"
SPLIT_ROUTE = "split"
# An attempt on an instance that hangs ends at perTryTimeout: either the caller's sidecar times it
# out (retried whatever retryOn says) or, first, the upstream sidecar, which enforces the attempt's
# grpc-timeout and answers DEADLINE_EXCEEDED; so deadline-exceeded is retried too (a retry that
# would end after the call's own deadline is never made). One whose app is gone is UNAVAILABLE.
RETRIES = {"attempts": 3, "perTryTimeout": "250ms", "retryOn": "unavailable,deadline-exceeded"}


def strict_mtls() -> dict[str, Any]:
    """Mutual TLS only, for every workload of the namespace."""
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default"},
        "spec": {"mtls": {"mode": "STRICT"}},
    }


# The demo's: an instance failing 3 calls in a row is ejected at once, for 30 s at first.
OUTLIER_DETECTION = {
    "consecutive5xxErrors": 3,
    "interval": "1s",
    "baseEjectionTime": "30s",
    "maxEjectionPercent": 50,
}


def destination_rule(traffic_policy: dict[str, Any] | None = None) -> dict[str, Any]:
    """users' subsets v1 and v2 (by the `version` label); `traffic_policy` default: the demo's
    outlier detection."""
    if traffic_policy is None:
        traffic_policy = {"outlierDetection": OUTLIER_DETECTION}
    return {
        "apiVersion": ISTIO_API,
        "kind": "DestinationRule",
        "metadata": {"name": "users"},
        "spec": {
            "host": "users",
            "trafficPolicy": traffic_policy,
            "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {"name": "v2", "labels": {"version": "v2"}},
            ],
        },
    }


def split_route(v1: int, v2: int, *, retries: bool = True) -> dict[str, Any]:
    """The route sending v1% of calls to subset v1 and v2% to v2 (with the demo's retries)."""
    route: dict[str, Any] = {
        "name": SPLIT_ROUTE,
        "route": [
            {"destination": {"host": "users", "subset": "v1"}, "weight": v1},
            {"destination": {"host": "users", "subset": "v2"}, "weight": v2},
        ],
    }
    if retries:
        route["retries"] = RETRIES
    return route


def _canary() -> dict[str, Any]:
    return {
        "name": CANARY_ROUTE,
        "match": [{"headers": {"x-canary": {"exact": "true"}}}],
        "route": [{"destination": {"host": "users", "subset": "v2"}}],
        "retries": RETRIES,
    }


def users_virtual_service(http: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": ISTIO_API,
        "kind": "VirtualService",
        "metadata": {"name": "users"},
        "spec": {"hosts": ["users"], "http": http},
    }


def virtual_service(v1: int, v2: int, *, canary_route: bool) -> dict[str, Any]:
    """users: `x-canary: true` to v2 first (when `canary_route`), then everything else v1/v2 by weight."""
    return users_virtual_service(([_canary()] if canary_route else []) + [split_route(v1, v2)])


def weights(spec: dict[str, Any]) -> dict[str, int]:
    """subset → weight of a users VirtualService spec's split route (as stored)."""
    for route in spec.get("http", []):
        if route.get("name") == SPLIT_ROUTE:
            return {r["destination"]["subset"]: int(r.get("weight", 0)) for r in route["route"]}
    return {}
