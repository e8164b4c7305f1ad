"""Benchmark: what VirtualService routing costs per call next to the relay's own cost, and how exact a
weighted split is under load (issue 5).

    make bench-routing                      # about a minute; writes bench/results/routing.md
    .venv/bin/python -m bench.routing --calls 20000 --reps 5

Two parts (bench/README.md explains them):

1. In process, on a fake call: the route filter (`sidecar.filters.routes.Routes`) deciding one call
   with a compiled table, minus the same loop with no table. Tables: the 90/10 split alone, and 100
   routes — 20 matching a header (exact, prefix and regex), 79 matching a method, the split last —
   with every matcher tried on each call (the call matches none until the split).
2. Real processes (the demo mesh: control plane, users v1 x2 and v2, the load generator's sidecar as
   the entry): h2load through the entry sidecar with each table applied in turn, runs interleaved;
   the entry sidecar's CPU per call (the relay's cost, routing included) and, from its /metrics, the
   share of calls each version served.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshctl.demo.mesh import ensure_stubs_importable

ensure_stubs_importable()

from bench import grpc_check, h2load, procstat  # noqa: E402
from meshctl import procs  # noqa: E402
from meshctl.demo import policies, scrape  # noqa: E402
from sidecar.call import CallHead, Target  # noqa: E402
from sidecar.config import Address, Endpoint, Policy, ServiceEntry  # noqa: E402
from sidecar.filters.routes import Routes, RoutesConfig  # noqa: E402
from sidecar.relay import parse_request  # noqa: E402
from sidecar.traffic import NO_TRAFFIC, Traffic, compile_traffic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "routing.md"
HEADER_ROUTES = 20
ROUTES = 100
# What the benchmarked call carries: metadata every header route reads, none matching (the
# in-process calls carry the same, `_head`).
CALL_HEADERS = ("x-tenant: tenant-none", "x-user: u-17")
GOAL = 0.10  # routing's share of the relay's cost per call
SPLIT_TOLERANCE = 0.02


# -- the tables ----------------------------------------------------------------------------------


def _header_match(i: int) -> dict[str, Any]:
    kind = ("exact", "prefix", "regex")[i % 3]
    value = {"exact": f"tenant-{i}", "prefix": f"tenant-{i}-", "regex": f"tenant-{i}(-[a-z]+)?"}[kind]
    return {"headers": {"x-tenant": {kind: value}, "x-user": {"prefix": "u-"}}}


def virtual_service(routes: int, header_routes: int = HEADER_ROUTES) -> dict[str, Any]:
    """users' VirtualService: `routes - 1` routes no benchmarked call matches, then the 90/10 split.
    The first `header_routes` match on x-tenant (and x-user, which the call does match), the rest
    on a method the call is not."""
    http = []
    for i in range(routes - 1):
        match = _header_match(i) if i < header_routes else {"uri": {"exact": f"/demo.v1.Users/Other{i}"}}
        http.append(
            {"name": f"r{i}", "match": [match], "route": [{"destination": {"host": "users", "subset": "v2"}}]}
        )
    http.append(policies.split_route(90, 10, retries=False))
    return policies.users_virtual_service(http)


def destination_rule() -> dict[str, Any]:
    return policies.destination_rule({})


TABLES = {"1 route (the split)": 1, f"{ROUTES} routes, {HEADER_ROUTES} on headers": ROUTES}


# -- part 1: in process ----------------------------------------------------------------------------


# In process only, to show where the cost of the big table goes: (routes, of which on headers).
BREAKDOWN = {
    f"{HEADER_ROUTES} header routes + the split": (HEADER_ROUTES + 1, HEADER_ROUTES),
    f"{ROUTES - HEADER_ROUTES - 1} method routes + the split": (ROUTES - HEADER_ROUTES, 0),
}


def compiled(routes: int | None, header_routes: int = HEADER_ROUTES) -> Traffic:
    if routes is None:
        return NO_TRAFFIC
    endpoints = (
        Endpoint(Address("127.0.0.1", 1), {"version": "v1"}),
        Endpoint(Address("127.0.0.1", 2), {"version": "v2"}),
    )
    services = {"users": ServiceEntry("users", ("demo.v1.Users",), endpoints)}
    policies = [
        Policy(doc["kind"], "default", doc["metadata"]["name"], doc["spec"])
        for doc in (destination_rule(), virtual_service(routes, header_routes))
    ]
    return compile_traffic(policies, services)


def _head(user: str = "u-17") -> CallHead:
    headers = [
        (b":method", b"POST", False),
        (b":scheme", b"http", False),
        (b":path", b"/demo.v1.Users/GetUser", False),
        (b":authority", b"users", False),
        (b"content-type", b"application/grpc", False),
        (b"te", b"trailers", False),
        (b"x-tenant", b"tenant-none", False),
        (b"x-user", user.encode(), False),
    ]
    parsed = parse_request(tuple(headers))
    return CallHead(parsed.path, parsed.authority, parsed.forward, None, None)


def per_call_us(
    routes: int | None,
    calls: int,
    repeats: int,
    header_routes: int = HEADER_ROUTES,
    *,
    new_shapes: bool = False,
) -> float:
    """The best of `repeats` loops of `calls` decisions, in µs per call. `new_shapes`: every call
    carries another x-user value (a header the routes match on), so no decision is ever reused."""
    target: Any = Target("users", None, b"users", b"https")  # type: ignore[arg-type]
    decide: Callable[[CallHead], Target] = Routes(
        lambda head: target, RoutesConfig(compiled(routes, header_routes), random.Random(1))
    )
    heads = [_head(f"u-{i}") for i in range(calls)] if new_shapes else [_head()] * calls
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for head in heads:
            head.service = "users"  # as the Router leaves it
            decide(head)
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


# -- part 2: real processes ----------------------------------------------------------------------


@dataclass
class Run:
    table: str
    calls: int
    cpu_us: float  # the entry sidecar's CPU per call
    req_per_s: float
    v2_share: float
    v2_calls: int
    other_load: float  # cores busy outside the bench's processes, during the run


@dataclass
class Measured:
    runs: list[Run] = field(default_factory=list)

    def median(self, table: str, attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in self.runs if r.table == table))


def _apply(client: Any, *documents: dict[str, Any]) -> None:
    from meshctl.cmd_status import wait_for_revision

    results = client.apply(list(documents))
    revision = max(r.resource.resource_version for r in results)
    outcome = wait_for_revision(client, revision, timeout=30, clock=time.monotonic, sleep=time.sleep)
    if not outcome.done:
        raise RuntimeError(f"revision {revision} not applied everywhere: {outcome}")


def measure_mesh(calls: int, reps: int, load: h2load.Load, work: Path) -> Measured:
    from control_plane.auth import Role, load_signing_key, mint_token
    from meshctl.api_client import ControlPlaneClient
    from meshctl.demo.mesh import USERS_INSTANCES, Launcher, Ports, wait_routable

    measured = Measured()
    with procs.ProcessGroup(grace=5.0) as group:
        mesh = Launcher(group, work, ports=Ports.any()).launch()
        for instance, _ in USERS_INSTANCES:
            grpc_check.create_user(mesh.apps[instance])
        wait_routable(mesh)
        token = mint_token(
            load_signing_key(mesh.api.data_dir), role=Role.ADMIN, subject="bench", now=datetime.now(UTC)
        )
        client = ControlPlaneClient(mesh.api.url, token)
        entry = mesh.sidecars["loadgen"]
        pid = next(p.pid for p in group.processes if p.name == entry.name)
        body = grpc_check.write_request_body(work / "request.bin")
        url = f"http://{mesh.entry}/demo.v1.Users/GetUser"
        _apply(client, destination_rule(), virtual_service(1))
        h2load.run(url, body, load, 2000, work / "warmup.log", timeout=120, headers=CALL_HEADERS)
        for rep in range(reps):
            order = list(TABLES.items())
            if rep % 2:
                order.reverse()
            for table, routes in order:
                _apply(client, destination_rule(), virtual_service(routes))
                before = scrape.scrape([entry.admin], time.monotonic())
                cpu, machine = procstat.cpu_seconds(pid), procstat.MachineTimes.read()
                own = _own_cpu(group)
                result = h2load.run(
                    url, body, load, calls, work / "h2load.log", timeout=300, headers=CALL_HEADERS
                )
                used = procstat.cpu_seconds(pid) - cpu
                other = machine_busy(machine, own, group, result.summary.seconds)
                after = scrape.scrape([entry.admin], time.monotonic())
                share, n = scrape.share(scrape.rows(before, after), "users", "v2")
                if result.summary.succeeded != calls or n != calls:
                    raise RuntimeError(f"{table}: {result.summary} and {n} calls counted by the sidecar")
                measured.runs.append(
                    Run(
                        table,
                        calls,
                        used / calls * 1e6,
                        result.summary.req_per_s,
                        share,
                        round(share * n),
                        other,
                    )
                )
                print(f"  {table}: {measured.runs[-1]}", file=sys.stderr, flush=True)
    return measured


def _own_cpu(group: procs.ProcessGroup) -> float:
    return sum(procstat.cpu_seconds(p.pid) for p in group.processes)


def machine_busy(
    before: procstat.MachineTimes, own_before: float, group: procs.ProcessGroup, seconds: float
) -> float:
    """Cores busy outside the mesh's processes during the run (h2load and this process included)."""
    busy = procstat.MachineTimes.read().busy_seconds_since(before)
    own = _own_cpu(group) - own_before
    return max(0.0, busy - own) / max(seconds, 1e-9)


# -- report --------------------------------------------------------------------------------------


InProcess = dict[str, tuple[float, float]]  # table → (µs per call, repeated shape; every call new)


def report(in_process: InProcess, measured: Measured, args: argparse.Namespace) -> str:
    base_same, base_new = in_process["no VirtualService"]
    lines = [
        f"# Routing cost and split accuracy ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"In process, the route filter deciding one call, µs per call, minus the same loop without a "
        f"VirtualService (best of {args.repeats} x {args.decisions} calls):",
        "",
        "| table | repeated call shape | every call a new shape (x-user differs) |",
        "|---|---|---|",
    ]
    for table, (same, new) in in_process.items():
        lines.append(f"| {table} | {same - base_same:.2f} | {new - base_new:.2f} |")
    lines += [
        "",
        f"Real processes: h2load `{args.load}` through the entry sidecar, {args.calls} calls per run, "
        f"{args.reps} runs per table interleaved, medians:",
        "",
        "| table | entry sidecar CPU µs/call | req/s | v2 share (goal 10% ± 2) | other load (cores) |",
        "|---|---|---|---|---|",
    ]
    for table in TABLES:
        shares = [r.v2_share for r in measured.runs if r.table == table]
        cpu, rate = measured.median(table, "cpu_us"), measured.median(table, "req_per_s")
        lines.append(
            f"| {table} | {cpu:.1f} | {rate:.0f} | "
            f"{statistics.median(shares):.2%} (min {min(shares):.2%}, max {max(shares):.2%}) | "
            f"{measured.median(table, 'other_load'):.2f} |"
        )
    big = next(t for t, n in TABLES.items() if n == ROUTES)
    small = next(t for t, n in TABLES.items() if n == 1)
    relay = measured.median(small, "cpu_us")
    same = in_process[big][0] - base_same
    new = in_process[big][1] - base_new
    e2e = measured.median(big, "cpu_us") - relay
    worst = max(abs(r.v2_share - 0.10) for r in measured.runs)
    lines += [
        "",
        f"- routing with {ROUTES} routes ({HEADER_ROUTES} on headers), a repeated call shape: "
        f"**{same:.1f} µs per call = {same / relay:.1%} of the relay's {relay:.0f} µs** "
        f"(goal < {GOAL:.0%}: {'met' if same / relay < GOAL else 'missed'})",
        f"- the same table, every call a new shape (every matcher tried on every call): "
        f"**{new:.1f} µs = {new / relay:.1%}** ({'met' if new / relay < GOAL else 'missed'})",
        f"- the same seen end to end (entry sidecar CPU per call, {ROUTES} routes minus 1): {e2e:+.1f} µs",
        f"- split accuracy under load: worst run {worst:.2%} from 10% over {args.calls} calls "
        f"(goal ± {SPLIT_TOLERANCE:.0%}: {'met' if worst <= SPLIT_TOLERANCE else 'missed'})",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="h2load calls per run (default 20000)")
    parser.add_argument("--reps", type=int, default=5, help="runs per table (default 5)")
    parser.add_argument("-c", type=int, default=4, help="h2load connections (default 4)")
    parser.add_argument("-m", type=int, default=10, help="h2load streams per connection (default 10)")
    parser.add_argument("--decisions", type=int, default=100_000, help="in-process calls per loop")
    parser.add_argument("--repeats", type=int, default=5, help="in-process loops per table (best kept)")
    args = parser.parse_args(argv)
    args.load = h2load.Load(args.c, args.m)
    tables: dict[str, tuple[int | None, int]] = {"no VirtualService": (None, 0)}
    tables.update({table: (routes, HEADER_ROUTES) for table, routes in TABLES.items()})
    tables.update(BREAKDOWN)
    in_process: InProcess = {
        table: tuple(  # type: ignore[misc]
            per_call_us(routes, args.decisions, args.repeats, on_headers, new_shapes=new)
            for new in (False, True)
        )
        for table, (routes, on_headers) in tables.items()
    }
    with tempfile.TemporaryDirectory(prefix="bench-routing-") as work:
        measured = measure_mesh(args.calls, args.reps, args.load, Path(work))
    text = report(in_process, measured, args)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
