"""Benchmark: what outlier detection buys under chaos, and what it costs per call.

1. Chaos, real processes (tests.support.chaos_mesh: a control plane, three echo servers behind
   their sidecars, a client sidecar): one echo server slowed to 2 s; callers with a 1 s deadline
   make CALLS unary calls, CONCURRENCY at a time, through the client sidecar; side by side with no
   outlier detection, consecutive-failure ejection, and A50's failure-percentage ejection. Success
   rate, latency percentiles, and how long until the slow endpoint was ejected.
2. Per call, in process: a balancer pick plus its report, plain round robin vs a cluster with
   outlier detection, a breaker and connection-pool limits (`Guarded`).

    .venv/bin/python -m bench.outlier
"""

from __future__ import annotations

import random
import ssl
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from sidecar.balancer import Balancer
from sidecar.call import CallHead
from sidecar.clusters import ClusterStates
from sidecar.config import Address, Endpoint, Policy, ServiceEntry
from sidecar.grpc_wire import Code
from sidecar.h2.stream import Limits
from sidecar.pool import Pools
from sidecar.traffic import compile_traffic
from tests.support.chaos_mesh import ChaosMesh, running_chaos_mesh
from tests.support.clients import ECHO, channel

CALLS = 600
CONCURRENCY = 12
DEADLINE = 1.0
SLOW_MS = 2000

ROWS: list[tuple[str, dict[str, Any]]] = [
    ("no outlier detection", {}),
    (
        "consecutive5xxErrors 5",
        {"outlierDetection": {"consecutive5xxErrors": 5, "interval": "1s", "baseEjectionTime": "60s"}},
    ),
    (
        "failure % (threshold 50, interval 1s)",
        {
            "outlierDetection": {
                "consecutive5xxErrors": 0,
                "interval": "1s",
                "baseEjectionTime": "60s",
                "maxEjectionPercent": 34,
                "failurePercentageEjection": {"threshold": 50, "minimumHosts": 3, "requestVolume": 5},
            }
        },
    ),
]


def _call(ch: Any) -> tuple[bool, float]:
    start = time.perf_counter()
    try:
        ch.unary_unary(ECHO + "Unary")(b"ping", timeout=DEADLINE)
        ok = True
    except grpc.RpcError:
        ok = False
    return ok, time.perf_counter() - start


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def chaos_row(mesh: ChaosMesh, traffic_policy: dict[str, Any]) -> str:
    mesh.apply({})  # forget every ejection of the previous row
    mesh.apply(traffic_policy)
    slow = mesh.echoes[0]
    mesh.fault(slow, delay_ms=SLOW_MS)
    ejected_after: float | None = None
    results: list[tuple[bool, float]] = []
    try:
        with channel(mesh.client.outbound) as ch, ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            start = time.perf_counter()
            futures = [pool.submit(_call, ch) for _ in range(CALLS)]
            while not all(f.done() for f in futures):
                if ejected_after is None and any(c["ejected_from"] for c in mesh.clusters()["clusters"]):
                    ejected_after = time.perf_counter() - start
                time.sleep(0.05)
            results = [f.result() for f in futures]
    finally:
        mesh.fault(slow)
    ok = sum(1 for passed, _ in results if passed)
    millis = [seconds * 1000 for _, seconds in results]
    ejected = "never" if ejected_after is None else f"{ejected_after:.2f} s"
    return (
        f"{100 * ok / len(results):.1f}% | {_percentile(millis, 0.5):.1f} | "
        f"{_percentile(millis, 0.99):.0f} | {ejected}"
    )


def chaos() -> None:
    print(
        f"One of 3 echo endpoints slowed to {SLOW_MS} ms; {CALLS} calls, {CONCURRENCY} at a time, "
        f"{DEADLINE:g} s deadline.\n"
    )
    print("| DestinationRule | success | p50 ms | p99 ms | slow endpoint ejected after |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, running_chaos_mesh(Path(tmp)) as mesh:
        for name, policy in ROWS:
            print(f"| {name} | {chaos_row(mesh, policy)} |", flush=True)


N = 200_000
ENDPOINTS = tuple(Endpoint(Address(f"10.0.1.{i}", 15006)) for i in range(1, 4))
SERVICES = {"users": ServiceEntry("users", ("demo.v1.Users",), ENDPOINTS)}
GUARDED = {
    "connectionPool": {"http": {"http2MaxRequests": 1000, "http1MaxPendingRequests": 100}},
    "outlierDetection": {
        "consecutive5xxErrors": 5,
        "successRateEjection": {},
        "failurePercentageEjection": {},
    },
    "circuitBreaker": {},
}


def per_call(traffic_policy: dict[str, Any]) -> float:
    traffic = compile_traffic(
        [Policy("DestinationRule", "default", "users", {"host": "users", "trafficPolicy": traffic_policy})],
        SERVICES,
    )
    states = ClusterStates(rand=random.Random(1))
    states.sync(
        (key, c.resilience, [ep.address for ep in c.endpoints]) for key, c in traffic.clusters.items()
    )
    pick = Balancer(traffic, Pools(Limits(), ssl.create_default_context()), random.Random(1), states)
    head = CallHead("/demo.v1.Users/GetUser", "users", (), None, None, service="users")
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(N):
            target = pick(head)
            if target.report is not None:
                target.report(Code.OK)
        best = min(best, (time.perf_counter() - start) / N * 1e6)
    return best


def micro() -> None:
    rows: list[tuple[str, dict[str, Any]]] = [
        ("round robin, no resilience settings", {}),
        ("`outlierDetection` only", {"outlierDetection": {}}),
        ("outlier detection + breaker + connectionPool limits", GUARDED),
    ]
    print("\n| pick + report | µs per call |")
    print("|---|---|")
    for name, policy in rows:
        print(f"| {name} | {per_call(policy):.2f} |")


def main() -> None:
    chaos()
    micro()


if __name__ == "__main__":
    main()
