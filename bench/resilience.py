"""Resilience benchmark: what a caller sees while an upstream misbehaves, and how many upstream
attempts its calls cost, side by side with a no-fault baseline in the same run.

    .venv/bin/python -m bench.resilience [--rate 200] [--seconds 6]   # or: make bench-resilience
    .venv/bin/python -m bench.resilience --only kill,amplification

Each run is tests/support/flaky.py's harness: three gRPC servers (real mutual TLS) behind one real
client Sidecar whose snapshot carries the run's VirtualService/DestinationRule, in this process.
The caller sends unary-request calls open-loop at `--rate` for `--seconds` (a call starts on
schedule whether or not earlier ones have finished); a healthy server answers after
`--service-ms`. At a third of the run the fault starts:

- kill: one of the three servers stops (its calls in flight are cut, its port refuses);
- slow: one server takes 2 s per call, the route has a 1 s timeout;
- flaky: one server fails half its calls with UNAVAILABLE (Trailers-Only);
- amplification: every server fails half its calls, or all of them, from the start; the route
  retries up to 4 times (5 attempts, gRFC A6's cap) under the sidecar's retry limits.

Reported per run: the calls' success rate and status counts, p50/p99 latency as the caller saw it,
upstream attempts per call (every attempt the servers received ÷ the caller's calls) and the
sidecar's retry counters. Markdown, printed and written to bench/results/resilience.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from bench import procstat
from bench.run import machine_description
from bench.sim_sidecars import percentile
from sidecar.config import Policy
from tests.support.flaky import Action, Fail, FlakyMesh, Sleep, flaky_mesh, route, virtual_service

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "results" / "resilience.md"
ENDPOINTS = 3
SLOW_SECONDS = 2.0
ROUTE_TIMEOUT = "1s"  # the slow scenario's route timeout
CALLER_TIMEOUT = 10.0  # the caller's own deadline on every call
STILL_THERE = 0.25  # seconds: a server that got an attempt this close to the last call still gets traffic
WARMUP_CALLS = 12  # sequential calls before the load, so every endpoint has a connection
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
OK = grpc.StatusCode.OK

# The sidecar's retry limits (its config keys), as the amplification runs vary them.
BUDGET_DEFAULT: dict[str, Any] = {}  # Envoy's budget, on by default: 20% of calls in flight, min 3
BUDGET_OFF = {"retry_budget": {"percent": 100, "min_retry_concurrency": 1_000_000}}
THROTTLE = {"retry_throttling": {"max_tokens": 10, "token_ratio": 0.1}}  # gRFC A6's example values

RETRY_ON_FAILURE = {"attempts": 2, "retryOn": "unavailable,cancelled"}  # Istio's default retryOn
RETRY_MAX = {"attempts": 4, "retryOn": "unavailable"}  # 5 attempts in all, A6's cap
OUTLIER_CONSECUTIVE = {
    "consecutive5xxErrors": 5,
    "interval": "1s",
    "baseEjectionTime": "30s",
    "maxEjectionPercent": 34,
}
OUTLIER_FAILURE_PERCENT = {
    "consecutive5xxErrors": 0,  # only the interval's failure-percentage sweep
    "interval": "1s",
    "baseEjectionTime": "30s",
    "maxEjectionPercent": 34,
    "failurePercentageEjection": {"threshold": 40, "minimumHosts": ENDPOINTS, "requestVolume": 10},
}


@dataclass(frozen=True)
class Settings:
    rate: float  # calls started per second
    seconds: float  # length of each run's load
    service: float  # a healthy server's time per call, seconds
    seed: int = 7
    max_stall: float = 0.2  # seconds: a run whose loop stalled longer is run again ...
    redos: int = 2  # ... at most this many times


@dataclass(frozen=True, slots=True)
class Outcome:
    """One caller's call: when it started (time.monotonic()), how long it took, its status."""

    start: float
    seconds: float
    code: grpc.StatusCode
    details: str = ""


Fault = Callable[[FlakyMesh, "Behaviour"], Awaitable[None]]


@dataclass(frozen=True)
class Variant:
    """One run: the routing policy, the sidecar's config, and the fault (None: the baseline)."""

    scenario: str
    name: str
    http: dict[str, Any]  # the VirtualService http[] entry
    traffic_policy: dict[str, Any] | None = None  # the DestinationRule's, when there is one
    config: dict[str, Any] = field(default_factory=dict)
    fault: Fault | None = None
    fault_at: float = 1 / 3  # share of the run after which the fault starts

    def policies(self) -> list[Policy]:
        policies = [virtual_service(self.http)]
        if self.traffic_policy is not None:
            spec = {"host": "flaky", "trafficPolicy": self.traffic_policy}
            policies.append(Policy("DestinationRule", "default", "flaky", spec))
        return policies


@dataclass
class Result:
    variant: Variant
    outcomes: list[Outcome]
    attempts: int  # calls the servers received during the load
    counters: Counter[str]  # the sidecar's counters' growth during the load
    fault_started: float | None  # time.monotonic()
    attempts_on_faulty: list[float]  # when each attempt reached the faulty server after the fault
    load: Load = field(default_factory=lambda: Load(0.0, 0.0, 0.0))
    tries: int = 1  # runs made of this variant (more when the loop stalled): this one stalled least

    @property
    def calls(self) -> int:
        return len(self.outcomes)

    @property
    def ok(self) -> int:
        return sum(o.code == OK for o in self.outcomes)

    @property
    def success_rate(self) -> float:
        return self.ok / self.calls if self.calls else 0.0

    @property
    def amplification(self) -> float:
        return self.attempts / self.calls if self.calls else 0.0

    def latency_ms(self, q: float) -> float:
        return percentile([o.seconds * 1000 for o in self.outcomes], q)

    def failures(self) -> str:
        codes = Counter(o.code.name for o in self.outcomes if o.code != OK)
        return ", ".join(f"{n} {name}" for name, n in codes.most_common()) or "—"

    def messages(self) -> list[tuple[int, str, str]]:
        """Each distinct failure (count, status, message), most frequent first."""
        counts = Counter((o.code.name, o.details) for o in self.outcomes if o.code != OK)
        return [(n, code, details) for (code, details), n in counts.most_common()]

    def moved_away_after(self) -> float | None:
        """Seconds from the fault until the last attempt the faulty server received."""
        if self.fault_started is None or not self.attempts_on_faulty:
            return None
        return max(self.attempts_on_faulty) - self.fault_started


@dataclass(frozen=True)
class Load:
    """What else was going on during a run's load: the bench process's CPU (caller, sidecar and
    servers together) and everything else's on the machine, in cores; and the longest the event
    loop ran a 10 ms timer late, a stall every call in flight then waited out."""

    bench_cores: float
    other_cores: float
    worst_stall: float  # seconds


class Measure:
    """Reads Load around a run: CPU times before and after, a timer task watching the loop."""

    TICK = 0.01

    def __init__(self) -> None:
        self.worst_stall = 0.0
        self._task: asyncio.Task[None] | None = None
        self._wall = self._cpu = 0.0
        self._machine = procstat.MachineTimes.read()

    async def _watch(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.TICK)
            self.worst_stall = max(self.worst_stall, time.monotonic() - before - self.TICK)

    def start(self) -> None:
        self._wall, self._cpu = time.monotonic(), procstat.cpu_seconds(os.getpid())
        self._machine = procstat.MachineTimes.read()
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> Load:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        wall = max(time.monotonic() - self._wall, 1e-9)
        cpu = procstat.cpu_seconds(os.getpid()) - self._cpu
        busy = procstat.MachineTimes.read().busy_seconds_since(self._machine)
        return Load(cpu / wall, max(0.0, busy - cpu) / wall, self.worst_stall)


# ---------------------------------------------------------------------------------------- servers


class Behaviour:
    """What each server does with a call: answer after the service time, or what a fault set.
    Drawn from a seeded random source, so a run's failures are the same each time."""

    def __init__(self, mesh: FlakyMesh, service: float, seed: int) -> None:
        self.mesh = mesh
        self.service = service
        self.rand = random.Random(seed)
        for port in mesh.ports:
            self.set(port, self.healthy)

    def set(self, port: int, action: Callable[[], Action]) -> None:
        self.mesh.script.by_port[port] = action

    def healthy(self) -> Action:
        return Sleep(self.service)

    def failing(self, share: float) -> Callable[[], Action]:
        def action() -> Action:
            return Fail(UNAVAILABLE) if self.rand.random() < share else Sleep(self.service)

        return action

    @property
    def faulty(self) -> int:
        """The port of the server the one-server faults hit."""
        return self.mesh.ports[0]


async def kill_one(mesh: FlakyMesh, behaviour: Behaviour) -> None:
    await mesh.servers[0].stop(None)


async def slow_one(mesh: FlakyMesh, behaviour: Behaviour) -> None:
    behaviour.set(behaviour.faulty, lambda: Sleep(SLOW_SECONDS))


async def half_failing_one(mesh: FlakyMesh, behaviour: Behaviour) -> None:
    behaviour.set(behaviour.faulty, behaviour.failing(0.5))


async def half_failing_all(mesh: FlakyMesh, behaviour: Behaviour) -> None:
    for port in mesh.ports:
        behaviour.set(port, behaviour.failing(0.5))


async def all_failing(mesh: FlakyMesh, behaviour: Behaviour) -> None:
    for port in mesh.ports:
        behaviour.set(port, lambda: Fail(UNAVAILABLE))


# ---------------------------------------------------------------------------------------- runs


async def _one_call(mesh: FlakyMesh, channel: grpc.aio.Channel) -> Outcome:
    start = time.monotonic()
    try:
        await mesh.call(channel, timeout=CALLER_TIMEOUT)
        code = OK
    except grpc.aio.AioRpcError as exc:
        return Outcome(start, time.monotonic() - start, exc.code(), exc.details() or "")
    return Outcome(start, time.monotonic() - start, code)


async def drive(
    mesh: FlakyMesh, settings: Settings, fault: Callable[[], Awaitable[None]] | None, fault_at: float
) -> tuple[list[Outcome], float | None]:
    """Start calls open-loop at settings.rate for settings.seconds, the fault (if any) at
    fault_at of the way; wait for every call. Returns the outcomes and when the fault started."""
    total = max(1, round(settings.rate * settings.seconds))
    fault_index = min(total - 1, round(total * fault_at)) if fault is not None else None
    fault_started: float | None = None
    tasks: list[asyncio.Task[Outcome]] = []
    async with mesh.channel() as channel:
        t0 = time.monotonic()
        for i in range(total):
            wait = t0 + i / settings.rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if i == fault_index and fault is not None:
                fault_started = time.monotonic()
                await fault()
            tasks.append(asyncio.create_task(_one_call(mesh, channel)))
        outcomes = await asyncio.gather(*tasks)
    return list(outcomes), fault_started


async def run_variant(variant: Variant, settings: Settings, root: Path) -> Result:
    async with flaky_mesh(
        root, variant.policies(), endpoints=ENDPOINTS, config=variant.config, seed=settings.seed
    ) as mesh:
        behaviour = Behaviour(mesh, settings.service, settings.seed)
        async with mesh.channel() as channel:
            for _ in range(WARMUP_CALLS):
                await mesh.call(channel, timeout=CALLER_TIMEOUT)
        mesh.script.seen.clear()
        before = Counter(mesh.sidecar.stats.counters)
        fault = variant.fault

        async def start_fault() -> None:
            assert fault is not None
            await fault(mesh, behaviour)

        measure = Measure()
        measure.start()
        outcomes, fault_started = await drive(
            mesh, settings, start_fault if fault is not None else None, variant.fault_at
        )
        load = await measure.stop()
        counters = Counter(mesh.sidecar.stats.counters)
        counters.subtract(before)
        seen = mesh.script.seen
        on_faulty = (
            [s.at for s in seen if s.port == behaviour.faulty and s.at >= fault_started]
            if fault_started is not None
            else []
        )
        return Result(variant, outcomes, len(seen), +counters, fault_started, on_faulty, load)


def variants() -> dict[str, list[Variant]]:
    """Every scenario's runs, its baseline (no fault) first."""
    timeout = {"timeout": ROUTE_TIMEOUT}
    per_try = {"attempts": 2, "retryOn": "unavailable", "perTryTimeout": "250ms"}
    return {
        "kill": [
            Variant("kill", "baseline: no fault, retries on", route(retries=RETRY_ON_FAILURE)),
            Variant("kill", "1 of 3 killed, no retries", route(), fault=kill_one),
            Variant("kill", "1 of 3 killed, retries on", route(retries=RETRY_ON_FAILURE), fault=kill_one),
            Variant(
                "kill", "1 of 3 killed, retries on + outlier: 5 consecutive", route(retries=RETRY_ON_FAILURE),
                {"outlierDetection": OUTLIER_CONSECUTIVE}, fault=kill_one,
            ),
        ],
        "slow": [
            Variant("slow", "baseline: no fault", route(**timeout)),
            Variant("slow", "1 of 3 at 2 s, no outlier detection", route(**timeout), fault=slow_one),
            Variant(
                "slow", "1 of 3 at 2 s, outlier: 5 consecutive", route(**timeout),
                {"outlierDetection": OUTLIER_CONSECUTIVE}, fault=slow_one,
            ),
            Variant(
                "slow", "1 of 3 at 2 s, outlier: failure % each 1 s", route(**timeout),
                {"outlierDetection": OUTLIER_FAILURE_PERCENT}, fault=slow_one,
            ),
            Variant(
                "slow", "1 of 3 at 2 s, outlier: 5 consecutive + perTryTimeout 250ms",
                route(**timeout, retries=per_try), {"outlierDetection": OUTLIER_CONSECUTIVE},
                fault=slow_one,
            ),
        ],
        "flaky": [
            Variant("flaky", "baseline: no fault", route(retries=RETRY_ON_FAILURE)),
            Variant("flaky", "1 of 3 fails 50%, no retries", route(), fault=half_failing_one),
            Variant(
                "flaky", "1 of 3 fails 50%, retries on", route(retries=RETRY_ON_FAILURE),
                fault=half_failing_one,
            ),
            Variant(
                "flaky", "1 of 3 fails 50%, retries + outlier: failure % each 1 s",
                route(retries=RETRY_ON_FAILURE), {"outlierDetection": OUTLIER_FAILURE_PERCENT},
                fault=half_failing_one,
            ),
        ],
        "amplification": [
            Variant("amplification", "baseline: no fault, budget on", route(retries=RETRY_MAX)),
            *(
                Variant("amplification", f"{what}, {limits}", route(retries=RETRY_MAX), config=config,
                        fault=fault, fault_at=0.0)
                for what, fault in (("all fail 50%", half_failing_all), ("all fail 100%", all_failing))
                for limits, config in (
                    ("budget on (20%, min 3)", BUDGET_DEFAULT),
                    ("budget off", BUDGET_OFF),
                    ("budget off, A6 throttle (10, 0.1)", {**BUDGET_OFF, **THROTTLE}),
                    ("budget on, A6 throttle (10, 0.1)", THROTTLE),
                )
            ),
        ],
    }  # fmt: skip


# ---------------------------------------------------------------------------------------- report

_RETRY_COUNTERS = (
    "retries",
    "transparent_retries",
    "retry_denied_budget",
    "retry_denied_throttle",
    "retry_denied_max_retries",
    "retry_pushback_stop",
    "retry_exhausted",
    "retry_deadline",
)


def retry_counts(result: Result) -> str:
    parts = [
        f"{name} {result.counters[f'outbound.{name}']}"
        for name in _RETRY_COUNTERS
        if result.counters[f"outbound.{name}"]
    ]
    return ", ".join(parts) or "—"


def _moved(result: Result) -> str:
    if result.variant.fault is None:
        return "—"
    moved = result.moved_away_after()
    if moved is None:
        return "no attempt after the fault"
    attempts = len(result.attempts_on_faulty)
    if max(o.start for o in result.outcomes) - max(result.attempts_on_faulty) < STILL_THERE:
        return f"never: still getting calls at the end ({attempts} attempts)"
    return f"+{moved:.2f} s ({attempts} attempts)"


def table(results: Sequence[Result], *, moved: bool = False) -> str:
    head = (
        "| run | calls | success | failed | p50 ms | p99 ms | attempts/call | retry counters "
        "| worst loop stall ms | other load (cores) |"
    )
    rule = "|---|---|---|---|---|---|---|---|---|---|"
    if moved:
        head += " last attempt on the faulty server after the fault |"
        rule += "---|"
    lines = [head, rule]
    for r in results:
        name = r.variant.name + (f" (least stalled of {r.tries})" if r.tries > 1 else "")
        line = (
            f"| {name} | {r.calls} | {r.success_rate * 100:.2f}% | {r.failures()} "
            f"| {r.latency_ms(50):.1f} | {r.latency_ms(99):.1f} | {r.amplification:.2f} | {retry_counts(r)} "
            f"| {r.load.worst_stall * 1000:.0f} | {r.load.other_cores:.2f} |"
        )
        if moved:
            line += f" {_moved(r)} |"
        lines.append(line)
    return "\n".join(lines)


TITLES = {
    "kill": "One of three endpoints killed under load (retries off / on)",
    "slow": f"One endpoint slowed to {SLOW_SECONDS:g} s, route timeout {ROUTE_TIMEOUT} "
    "(outlier detection off / on)",
    "flaky": "One endpoint failing 50% of its calls with UNAVAILABLE",
    "amplification": "Retry amplification: attempts per call with retries up to 5 attempts",
}


def render(started: datetime, settings: Settings, results: dict[str, list[Result]]) -> str:
    lines = [
        f"# grpc-mesh resilience benchmark, {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"- machine: {machine_description()}; Python {platform.python_version()}, grpcio {grpc.__version__}",
        f"- {ENDPOINTS} gRPC servers (mTLS) behind one client sidecar, all in the bench process; "
        f"open-loop load of {settings.rate:g} calls/s for {settings.seconds:g} s per run; a healthy "
        f"server answers after {settings.service * 1000:g} ms; the fault starts a third into the run",
        "- percentiles are nearest-rank over every call of the run; attempts/call = attempts the "
        "servers received ÷ the caller's calls",
        "- worst loop stall: the longest the bench's event loop ran a 10 ms timer late during the run "
        "(a stall every call in flight waits out); other load: CPU of every other process on the "
        "machine during the run",
        "",
    ]
    for scenario, rows in results.items():
        lines += [f"## {TITLES[scenario]}", "", table(rows, moved=scenario == "slow"), ""]
    lines += ["## Failures by message", ""]
    for rows in results.values():
        for r in rows:
            shown = "; ".join(f'{n}x {code} "{details}"' for n, code, details in r.messages()[:4])
            if shown:
                lines.append(f"- {r.variant.scenario} / {r.variant.name}: {shown}")
    lines.append("")
    problems = baseline_problems(results)
    if problems:
        lines += ["## Problems", ""] + [f"- {p}" for p in problems] + [""]
    return "\n".join(lines)


def baseline_problems(results: dict[str, list[Result]]) -> list[str]:
    """A baseline run (no fault) with a failed call means the harness, not the fault, failed."""
    return [
        f"{r.variant.scenario} / {r.variant.name}: {r.failures()}"
        for rows in results.values()
        for r in rows
        if r.variant.fault is None and r.ok != r.calls
    ]


# ---------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.resilience",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rate", type=float, default=200.0, help="calls started per second (default 200)")
    parser.add_argument("--seconds", type=float, default=6.0, help="load per run, seconds (default 6)")
    parser.add_argument(
        "--service-ms", type=float, default=20.0, help="a healthy server's time per call (default 20)"
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated scenarios (default all: {','.join(TITLES)})"
    )
    parser.add_argument(
        "--max-stall-ms", type=float, default=200.0,
        help="run again a run whose event loop stalled longer than this (default 200)",
    )  # fmt: skip
    parser.add_argument(
        "--redos", type=int, default=2, help="at most this many extra tries per run (default 2)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report file (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or min(args.service_ms, args.max_stall_ms, args.redos) < 0:
        parser.error(
            "--rate and --seconds must be positive; --service-ms, --max-stall-ms, --redos not negative"
        )
    unknown = set(filter(None, args.only.split(","))) - set(TITLES)
    if unknown:
        parser.error(f"--only: unknown scenario(s) {', '.join(sorted(unknown))}; known: {', '.join(TITLES)}")
    return args


async def run_all(settings: Settings, only: set[str]) -> dict[str, list[Result]]:
    """Every run of the chosen scenarios. A run during which the loop stalled longer than
    settings.max_stall (the machine's other work starved this process) is run again, at most
    settings.redos times; the least stalled of its tries is kept and says how many there were."""
    results: dict[str, list[Result]] = {}
    for scenario, runs in variants().items():
        if only and scenario not in only:
            continue
        for variant in runs:
            tries: list[Result] = []
            while len(tries) <= settings.redos:
                with tempfile.TemporaryDirectory(prefix="grpc-mesh-bench-res-") as tmp:
                    result = await run_variant(variant, settings, Path(tmp))
                tries.append(result)
                print(
                    f"bench: {scenario} / {variant.name}: {result.success_rate * 100:.2f}% ok, "
                    f"p99 {result.latency_ms(99):.1f} ms, {result.amplification:.2f} attempts/call, "
                    f"worst stall {result.load.worst_stall * 1000:.0f} ms",
                    flush=True,
                )
                if result.load.worst_stall <= settings.max_stall:
                    break
            kept = min(tries, key=lambda r: r.load.worst_stall)
            kept.tries = len(tries)
            results.setdefault(scenario, []).append(kept)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Each call sent to a killed server's port logs its refused connection: counted in the table.
    logging.getLogger("sidecar.pool").setLevel(logging.ERROR)
    settings = Settings(
        args.rate, args.seconds, args.service_ms / 1000, max_stall=args.max_stall_ms / 1000, redos=args.redos
    )
    started = datetime.now(UTC)
    results = asyncio.run(run_all(settings, set(filter(None, args.only.split(",")))))
    text = render(started, settings, results)
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"bench: report written to {args.out}")
    return 1 if baseline_problems(results) else 0


if __name__ == "__main__":
    sys.exit(main())
