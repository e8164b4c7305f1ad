"""Control-plane benchmark: how long from a policy apply until every sidecar has ACKed it.

    .venv/bin/python -m bench.control_plane [--sidecars 100] [--applies 50]   # or: make bench-control-plane

Starts a real `meshctl control-plane` (no warm-up, the default debounce), connects `--sidecars`
simulated sidecars from this process (grpc.aio discovery streams on one event loop, see
bench/sim_sidecars.py), then applies a VirtualService through the REST API `--applies` times, one
at a time, alternating its weights so that every apply changes what every sidecar is sent. Each
apply is timed from just before its POST until every sidecar has ACKed a snapshot built from the
revision the POST returned. Reports p50/p99/max of that and of the POST alone, and the control
plane's RSS and CPU, as markdown (printed, and written to bench/results/control_plane.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import grpc

from bench import procstat, sim_sidecars
from bench.run import machine_description
from control_plane.auth import Role, load_signing_key, mint_token, utc_now
from control_plane.discovery import DEFAULT_DEBOUNCE
from meshctl import procs
from meshctl.demo.mesh import child_env

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "results" / "control_plane.md"
GOAL_P99_S = 1.0  # issue 3: apply → all-ACK for 100 sidecars, p99 at most this
READY_TIMEOUT = 20.0
STOP_GRACE = 5.0
HTTP_TIMEOUT = 30.0
NAMESPACE = sim_sidecars.NAMESPACE
SERVICE = sim_sidecars.TARGET_SERVICE
INITIAL_WEIGHT = 50  # v1's weight before the measured applies, which then alternate 90 and 10


# ---------------------------------------------------------------------------------------- documents


def destination_rule() -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE},
        "spec": {
            "host": SERVICE,
            "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v2")],
        },
    }


def virtual_service(weight_v1: int) -> dict[str, Any]:
    """`users` split between its subsets v1 and v2, `weight_v1` percent to v1."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE},
        "spec": {
            "hosts": [SERVICE],
            "http": [
                {
                    "name": "split",
                    "route": [
                        {"destination": {"host": SERVICE, "subset": "v1"}, "weight": weight_v1},
                        {"destination": {"host": SERVICE, "subset": "v2"}, "weight": 100 - weight_v1},
                    ],
                }
            ],
        },
    }


def weight_of_apply(index: int) -> int:
    """v1's weight in measured apply `index` (0-based): 90, 10, 90, ... — each differs from the one
    before it, the first from INITIAL_WEIGHT."""
    return 90 if index % 2 == 0 else 10


def applied_revision(response: Mapping[str, Any]) -> int:
    """The store revision an apply wrote, from the REST answer (int64s come as strings)."""
    results = response.get("results")
    if not isinstance(results, list) or not results:
        raise ValueError(f"the apply answer has no results: {response!r}")
    actions = {str(r.get("action")) for r in results}
    if actions & {"unchanged", ""}:
        raise ValueError(
            f"an apply did not change anything (actions {sorted(actions)}): the bench needs it to"
        )
    return max(int(r["resource"]["resourceVersion"]) for r in results)


def control_plane_view_problems(
    answer: Mapping[str, Any], node_ids: Sequence[str], revision: int
) -> list[str]:
    """What is wrong with the control plane's own record (GET /api/v1/sidecars) once every simulated
    sidecar has ACKed `revision`: each must be there, connected, in state ACK at that revision."""
    seen = {str(s.get("nodeId")): s for s in answer.get("sidecars") or []}
    problems = []
    missing = [n for n in node_ids if n not in seen]
    if missing:
        problems.append(f"{len(missing)} sidecars missing from the control plane's list (e.g. {missing[0]})")
    for node in node_ids:
        s = seen.get(node)
        if s is None:
            continue
        if not s.get("connected") or s.get("state") != "ACK" or int(s.get("appliedRevision") or 0) < revision:
            problems.append(
                f"{node}: connected={s.get('connected')} state={s.get('state')} "
                f"appliedRevision={s.get('appliedRevision')}, expected ACK at {revision}"
            )
    return problems


# ---------------------------------------------------------------------------------------- measuring


def status_kib(pid: int, name: str) -> int:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise ValueError(f"no {name} for pid {pid}")


@dataclass(frozen=True, slots=True)
class ApplySample:
    index: int
    weight_v1: int
    revision: int
    post_s: float  # the POST's round trip
    first_s: float  # from just before the POST until the first sidecar received its snapshot
    all_ack_s: float  # from just before the POST until the last sidecar ACKed
    snapshots: int  # sent for this revision over all sidecars (one each expected)


@dataclass
class Usage:
    """The control plane process's memory (KiB) and CPU (s), and what else ran during the applies."""

    rss_start_kib: int = 0
    rss_connected_kib: int = 0
    rss_end_kib: int = 0
    rss_peak_kib: int = 0  # VmHWM
    cpu_connect_s: float = 0.0
    cpu_applies_s: float = 0.0
    applies_wall_s: float = 0.0
    bench_cpu_applies_s: float = 0.0  # this process: the simulated sidecars and the HTTP client
    other_busy_s: float = 0.0  # every other process on the machine, during the applies


@dataclass
class Outcome:
    samples: list[ApplySample] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Settings:
    sidecars: int
    applies: int
    timeout: float
    pause: float
    settle: float
    debounce_ms: int | None


class Bench:
    def __init__(self, settings: Settings, pid: int, grpc_target: str, http: str, token: str) -> None:
        self.settings = settings
        self.pid = pid
        self.grpc_target = grpc_target
        self.base = f"http://{http}"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.fleet = sim_sidecars.Fleet(grpc_target, sim_sidecars.fleet_hellos(settings.sidecars))
        self.outcome = Outcome()

    async def post_apply(self, session: aiohttp.ClientSession, documents: list[dict[str, Any]]) -> int:
        async with session.post(
            self.base + "/api/v1/apply", json={"documents": documents}, headers=self.headers
        ) as reply:
            body = await reply.json()
            if reply.status != 200:
                raise RuntimeError(f"apply answered HTTP {reply.status}: {body}")
        return applied_revision(body)

    async def run(self) -> Outcome:
        s, usage = self.settings, self.outcome.usage
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            revision = await self.post_apply(session, [destination_rule(), virtual_service(INITIAL_WEIGHT)])
            usage.rss_start_kib = status_kib(self.pid, "VmRSS")
            cpu = procstat.cpu_seconds(self.pid)
            print(f"bench: connecting {s.sidecars} simulated sidecars to {self.grpc_target}", flush=True)
            self.fleet.start()
            try:
                await self.fleet.wait_for(revision, s.timeout)
                await self.fleet.settle(s.settle, s.timeout)
                usage.cpu_connect_s = procstat.cpu_seconds(self.pid) - cpu
                usage.rss_connected_kib = status_kib(self.pid, "VmRSS")
                print(f"bench: all connected and quiet; {s.applies} applies", flush=True)
                await self.applies(session, revision)
                usage.rss_end_kib = status_kib(self.pid, "VmRSS")
                usage.rss_peak_kib = status_kib(self.pid, "VmHWM")
                if self.outcome.samples and not self.outcome.problems:
                    await self.check_control_plane_view(session, self.outcome.samples[-1].revision)
            except sim_sidecars.FleetError as exc:
                self.outcome.problems.append(str(exc))
            finally:
                await self.fleet.close()
        return self.outcome

    async def applies(self, session: aiohttp.ClientSession, revision: int) -> None:
        s, usage = self.settings, self.outcome.usage
        cpu0, bench_cpu0 = procstat.cpu_seconds(self.pid), procstat.cpu_seconds(os.getpid())
        machine0, wall0 = procstat.MachineTimes.read(), time.monotonic()
        for index in range(s.applies):
            weight = weight_of_apply(index)
            previous = revision
            t0 = time.monotonic()
            revision = await self.post_apply(session, [virtual_service(weight)])
            posted = time.monotonic()
            try:
                await self.fleet.wait_for(revision, s.timeout)
            except sim_sidecars.FleetError as exc:
                self.outcome.problems.append(f"apply {index + 1} (revision {revision}): {exc}")
                break
            receipts = self.fleet.receipts()
            first = sim_sidecars.first_received_at(receipts, revision)
            done = sim_sidecars.all_acked_at(receipts, revision)
            assert first is not None and done is not None  # wait_for returned
            sample = ApplySample(
                index + 1, weight, revision, posted - t0, first - t0, done - t0,
                sim_sidecars.snapshots_between(receipts, previous, revision),
            )  # fmt: skip
            self.outcome.samples.append(sample)
            print(
                f"  apply {sample.index:>3}: revision {revision} v1={weight:>2}%  "
                f"POST {sample.post_s * 1000:6.1f} ms  all ACKed {sample.all_ack_s * 1000:7.1f} ms  "
                f"({sample.snapshots} snapshots)",
                flush=True,
            )
            await asyncio.sleep(s.pause)
        wall = time.monotonic() - wall0
        usage.applies_wall_s = wall
        usage.cpu_applies_s = procstat.cpu_seconds(self.pid) - cpu0
        usage.bench_cpu_applies_s = procstat.cpu_seconds(os.getpid()) - bench_cpu0
        busy = procstat.MachineTimes.read().busy_seconds_since(machine0)
        usage.other_busy_s = max(0.0, busy - usage.cpu_applies_s - usage.bench_cpu_applies_s)

    async def check_control_plane_view(self, session: aiohttp.ClientSession, revision: int) -> None:
        async with session.get(self.base + "/api/v1/sidecars", headers=self.headers) as reply:
            answer = await reply.json()
        node_ids = [str(h.node_id) for h in sim_sidecars.fleet_hellos(self.settings.sidecars)]
        problems = control_plane_view_problems(answer, node_ids, revision)
        if problems:
            self.outcome.problems.append(
                f"the control plane's sidecar list disagrees ({len(problems)} problems), first: {problems[0]}"
            )


# ---------------------------------------------------------------------------------------- report


@dataclass(frozen=True, slots=True)
class RunInfo:
    started: datetime
    machine: str
    software: str
    settings: Settings


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def latency_table(samples: Sequence[ApplySample], sidecars: int) -> str:
    lines = ["| measure | applies | p50 ms | p99 ms | max ms | mean ms |", "|---|---|---|---|---|---|"]
    for label, values in (
        (f"apply → all {sidecars} sidecars ACKed", [x.all_ack_s for x in samples]),
        ("apply → first sidecar received it", [x.first_s for x in samples]),
        ("apply POST round trip", [x.post_s for x in samples]),
    ):
        lines.append(
            f"| {label} | {len(values)} | {_ms(sim_sidecars.percentile(values, 50))} "
            f"| {_ms(sim_sidecars.percentile(values, 99))} | {_ms(max(values))} "
            f"| {_ms(statistics.fmean(values))} |"
        )
    return "\n".join(lines)


def usage_table(usage: Usage, applies: int) -> str:
    mib = 1024.0
    cores = usage.cpu_applies_s / usage.applies_wall_s if usage.applies_wall_s else 0.0
    per_apply = usage.cpu_applies_s / applies if applies else 0.0
    return "\n".join(
        [
            "| control plane process | value |",
            "|---|---|",
            f"| RSS before the sidecars connect | {usage.rss_start_kib / mib:.1f} MiB |",
            f"| RSS with every sidecar connected | {usage.rss_connected_kib / mib:.1f} MiB |",
            f"| RSS after the applies | {usage.rss_end_kib / mib:.1f} MiB |",
            f"| peak RSS (VmHWM) | {usage.rss_peak_kib / mib:.1f} MiB |",
            f"| CPU while the sidecars connected | {usage.cpu_connect_s:.2f} s |",
            f"| CPU during the applies | {usage.cpu_applies_s:.2f} s in {usage.applies_wall_s:.1f} s "
            f"({cores:.2f} cores), {per_apply * 1000:.0f} ms per apply |",
        ]
    )


def render(info: RunInfo, outcome: Outcome) -> str:
    s, usage, samples = info.settings, outcome.usage, outcome.samples
    inbound = len(range(0, s.sidecars, sim_sidecars.INBOUND_EVERY))
    debounce = s.debounce_ms if s.debounce_ms is not None else round(DEFAULT_DEBOUNCE * 1000)
    lines = [
        f"# grpc-mesh control plane benchmark, {info.started:%Y-%m-%d %H:%M} UTC",
        "",
        f"- machine: {info.machine}; {info.software}",
        f"- {s.sidecars} simulated sidecars ({inbound} `{SERVICE}` with an inbound address, the rest "
        f"client-only `{sim_sidecars.CLIENT_SERVICE}`; all depend on `{SERVICE}`), one grpc.aio stream "
        "each, from the bench process",
        f"- {s.applies} applies of VirtualService `{SERVICE}` over REST, one at a time, v1/v2 weights "
        f"alternating 90/10 and 10/90; {s.pause * 1000:.0f} ms pause after each all-ACK",
        f"- control plane: `meshctl control-plane --warmup-ms 0`, debounce {debounce} ms",
        "- percentiles are nearest-rank: with fewer than 100 applies p99 is the maximum",
        "",
    ]
    if samples:
        p99 = sim_sidecars.percentile([x.all_ack_s for x in samples], 99)
        verdict = "meets" if p99 <= GOAL_P99_S and not outcome.problems else "misses"
        extra = sum(x.snapshots for x in samples) - s.sidecars * len(samples)
        other = usage.other_busy_s / usage.applies_wall_s if usage.applies_wall_s else 0.0
        bench_cores = usage.bench_cpu_applies_s / usage.applies_wall_s if usage.applies_wall_s else 0.0
        lines += [
            latency_table(samples, s.sidecars),
            "",
            usage_table(usage, len(samples)),
            "",
            f"- apply → all-ACK p99: **{_ms(p99)} ms** ({verdict} the goal ≤ {GOAL_P99_S * 1000:.0f} ms)",
            f"- snapshots sent per apply: {s.sidecars} expected, {extra:+d} over all applies",
            f"- during the applies the bench process (simulated sidecars, HTTP client) used "
            f"{bench_cores:.2f} cores; every other process on the machine {other:.2f} cores",
        ]
    else:
        lines.append("No apply completed.")
    if outcome.problems:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in outcome.problems]
    if samples:
        lines += [
            "",
            "## Every apply",
            "",
            "| # | revision | v1 weight | POST ms | first received ms | all ACKed ms | snapshots |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {x.index} | {x.revision} | {x.weight_v1} | {_ms(x.post_s)} | {_ms(x.first_s)} "
            f"| {_ms(x.all_ack_s)} | {x.snapshots} |"
            for x in samples
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.control_plane",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sidecars", type=int, default=100, help="simulated sidecars (default 100)")
    parser.add_argument("--applies", type=int, default=50, help="measured applies (default 50)")
    parser.add_argument(
        "--timeout", type=float, default=30.0,
        help="seconds to wait for every sidecar to ACK one apply (and to connect) (default 30)",
    )  # fmt: skip
    parser.add_argument(
        "--pause-ms", type=int, default=100,
        help="pause after each all-ACK before the next apply, so each starts on a quiet control "
        "plane (default 100)",
    )  # fmt: skip
    parser.add_argument(
        "--settle-ms", type=int, default=500,
        help="after connecting, wait until no snapshot came for this long (default 500)",
    )  # fmt: skip
    parser.add_argument(
        "--debounce-ms", type=int, default=None, help="pass to the control plane (default: its own)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report file (default {DEFAULT_OUT})")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (data dir, log) afterwards")
    args = parser.parse_args(argv)
    if min(args.sidecars, args.applies) < 1 or args.timeout <= 0 or min(args.pause_ms, args.settle_ms) < 0:
        parser.error("--sidecars, --applies and --timeout must be positive, the pauses not negative")
    return args


def start_control_plane(group: procs.ProcessGroup, work_dir: Path, debounce_ms: int | None) -> dict[str, Any]:
    ready = work_dir / "control-plane.ready.json"
    argv = procs.python_argv(
        "-m", "meshctl", "control-plane", "--data-dir", str(work_dir / "data"),
        "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
        "--ready-file", str(ready), "--warmup-ms", "0",
    )  # fmt: skip
    if debounce_ms is not None:
        argv += ["--debounce-ms", str(debounce_ms)]
    return group.start("control-plane", argv, ready, env=child_env()).wait_ready(READY_TIMEOUT)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(
        args.sidecars,
        args.applies,
        args.timeout,
        args.pause_ms / 1000,
        args.settle_ms / 1000,
        args.debounce_ms,
    )
    work_dir = Path(tempfile.mkdtemp(prefix="grpc-mesh-bench-cp-"))
    info = RunInfo(
        started=datetime.now(UTC),
        machine=machine_description(),
        software=f"Python {platform.python_version()}, grpcio {grpc.__version__}, "
        f"aiohttp {aiohttp.__version__}",
        settings=settings,
    )
    ok = False
    try:
        with procs.ProcessGroup(grace=STOP_GRACE, log_dir=work_dir / "logs") as group:
            print(f"bench: starting the control plane in {work_dir}", flush=True)
            ready = start_control_plane(group, work_dir, args.debounce_ms)
            token = mint_token(
                load_signing_key(work_dir / "data"), role=Role.ADMIN, subject="bench",
                now=utc_now(), ttl=timedelta(hours=1),
            )  # fmt: skip
            bench = Bench(settings, int(ready["pid"]), str(ready["grpc"]), str(ready["http"]), token)
            outcome = asyncio.run(bench.run())
        text = render(info, outcome)
        print("\n" + text)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"bench: report written to {args.out}")
        ok = not outcome.problems and len(outcome.samples) == settings.applies
    except procs.ProcessError as exc:
        print(f"bench: the control plane did not start: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("bench: interrupted; the control plane was stopped", file=sys.stderr)
        return 130
    finally:
        if ok and not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            print(f"bench: kept {work_dir} (the data dir, logs/control-plane.log)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
