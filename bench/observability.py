"""What observability costs the relay: two-sidecar mesh paths (row 3's shape) side by side, with
the same app, load and measurement as bench.run (see bench/README.md), differing only in what the
sidecars record per call.

    .venv/bin/python -m bench.observability [--reps 5] [--seconds 4]

- bare: no Prometheus call metrics (bench.bare_sidecar), no access log, no tracing
- metrics: the default sidecar (Istio metrics on; access log and tracing off)
- all: metrics + JSON access log to a file + OpenTelemetry tracing sampled at 1%
  (parentbased_traceidratio 0.01) exported over OTLP/gRPC to a receiver in this process

Reports each sidecar's CPU per call and what metrics, and then everything, add over bare; writes
bench/results/observability.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
from collections.abc import Sequence
from concurrent import futures
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bench import grpc_check, h2load, report, run
from bench.topology import Proxy, Row, Topology, _issue_certificates, _tls
from meshctl import procs
from meshctl.demo.mesh import child_env

OUT = run.BENCH_DIR / "results" / "observability.md"
GOAL = 0.15  # added relay CPU per call with everything on, tracing at 1%
SAMPLE_RATIO = "0.01"
READY_TIMEOUT = 20.0


class SpanCounter(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that counts what it is sent."""

    def __init__(self) -> None:
        self.spans = 0
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        n = sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)
        with self.lock:
            self.spans += n
        return trace_service_pb2.ExportTraceServiceResponse()


class Launcher:
    def __init__(self, group: procs.ProcessGroup, work_dir: Path) -> None:
        self.group = group
        self.run_dir = work_dir / "run"
        self.log_dir = work_dir / "logs"
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, module: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        ready = self.run_dir / f"{name}.ready.json"
        argv = procs.python_argv("-m", module, *args, "--ready-file", str(ready))
        proc = self.group.start(name, argv, ready, env={**child_env(), **(env or {})}, log_dir=self.log_dir)
        return proc.wait_ready(READY_TIMEOUT)

    def sidecar(
        self, name: str, config: dict[str, Any], *, bare: bool, env: dict[str, str]
    ) -> dict[str, Any]:
        path = self.run_dir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        if bare:
            return self.start(name, "bench.bare_sidecar", "--config", str(path), env=env)
        return self.start(name, "meshctl", "sidecar", "--config", str(path), env=env)


def launch(group: procs.ProcessGroup, work_dir: Path, collector: str) -> Topology:
    launcher = Launcher(group, work_dir)
    certs = _issue_certificates(work_dir / "certs")
    topo = Topology(work_dir)
    app = launcher.start("app", "services.users", "--listen", "127.0.0.1:0", "--version", "v1",
                         "--instance", "bench-app")  # fmt: skip
    topo.app_address, topo.app_pid = str(app["address"]), int(app["pid"])
    tracing = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{collector}",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": SAMPLE_RATIO,
    }
    variants = [
        ("bare", "no call metrics, no access log, no tracing", True, False, {}),
        ("metrics", "Istio call metrics (the default)", False, False, {}),
        ("all", f"metrics + access log (file) + tracing at {float(SAMPLE_RATIO):.0%}", False, True, tracing),
    ]
    for key, what, bare, log, env in variants:
        server: dict[str, Any] = {
            "service": "users", "labels": {"version": "v1"},
            "listeners": {"inbound": "127.0.0.1:0", "admin": "127.0.0.1:0", "admin_grpc": False},
            "app": topo.app_address, "tls": _tls(certs["users"]), "services": {},
        }  # fmt: skip
        client: dict[str, Any] = {
            "service": "client", "labels": {"version": "v1"},
            "listeners": {"outbound": "127.0.0.1:0", "admin": "127.0.0.1:0", "admin_grpc": False},
            "tls": _tls(certs["client"]), "services": {},
        }  # fmt: skip
        if log:
            server["access_log"] = {"path": str(work_dir / f"access-{key}-in.log")}
            client["access_log"] = {"path": str(work_dir / f"access-{key}-out.log")}
        sc_in = launcher.sidecar(f"sidecar-in-{key}", server, bare=bare, env=env)
        client["services"] = {
            "users": {"grpc_services": ["demo.v1.Users"], "endpoints": [{"address": str(sc_in["inbound"])}]}
        }
        sc_out = launcher.sidecar(f"sidecar-out-{key}", client, bare=bare, env=env)
        topo.rows.append(
            Row(key, what, f"client → sidecar A → mTLS → sidecar B → app: {what}", str(sc_out["outbound"]),
                (Proxy("sidecar A", "sidecar", int(sc_out["pid"]), admin=str(sc_out["admin"])),
                 Proxy("sidecar B", "sidecar", int(sc_in["pid"]), admin=str(sc_in["admin"]))))
        )  # fmt: skip
    return topo


def render(info: str, summaries: Sequence[Any], spans: int, log_lines: int, calls: int) -> str:
    by_key = {s.row.key: s for s in summaries}
    lines = [
        f"# What observability costs the relay, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        info,
        "",
        "| sidecars | req/s | p50 ms | p99 ms | sidecar A µs/call | sidecar B µs/call | per hop "
        "| added per hop |",
        "|---|---|---|---|---|---|---|---|",
    ]
    bare = by_key.get("bare")
    for s in summaries:
        hop = s.cpu_per_hop_us
        added = "—"
        if bare is not None and s is not bare and bare.cpu_per_hop_us:
            extra = hop - bare.cpu_per_hop_us
            added = f"{extra:+.1f} µs ({extra / bare.cpu_per_hop_us:+.1%})"
        lines.append(
            f"| {s.row.key}: {s.row.name} | {s.req_per_s:.0f} | {s.p50_ms:.2f} | {s.p99_ms:.2f} "
            f"| {s.cpu_us['sidecar A']:.1f} | {s.cpu_us['sidecar B']:.1f} | {hop:.1f} | {added} |"
        )
    lines.append("")
    if bare is not None and "all" in by_key and bare.cpu_per_hop_us:
        share = by_key["all"].cpu_per_hop_us / bare.cpu_per_hop_us - 1
        verdict = "meets" if share <= GOAL else "misses"
        lines.append(
            f"- everything on (metrics + access log + tracing at 1%) adds **{share:+.1%}** relay CPU "
            f"per call per hop over bare ({verdict} the goal ≤ {GOAL:.0%})"
        )
    lines.append(
        f"- spans received by the OTLP receiver: {spans} for {calls} calls through the `all` row "
        f"(two spans per sampled call); access log lines written: {log_lines}"
    )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.observability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--clients", "-c", type=int, default=4)
    parser.add_argument("--streams", "-m", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup-requests", type=int, default=3000)
    parser.add_argument("--noisy-above", type=float, default=0.25)
    parser.add_argument("--redos", type=int, default=10)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if shutil.which("h2load") is None:
        print("bench: h2load not found; run `make tools`", file=sys.stderr)
        return 2
    load = h2load.Load(args.clients, args.streams)
    work_dir = Path(tempfile.mkdtemp(prefix="grpc-mesh-bench-obs-"))
    counter = SpanCounter()
    receiver = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(counter, receiver)  # type: ignore[no-untyped-call]
    port = receiver.add_insecure_port("127.0.0.1:0")
    receiver.start()
    try:
        with procs.ProcessGroup(grace=run.STOP_GRACE, log_dir=work_dir / "logs") as group:
            print(f"bench: starting the processes in {work_dir}", flush=True)
            topo = launch(group, work_dir, f"127.0.0.1:{port}")
            grpc_check.create_user(topo.app_address)
            bench = run.Bench(topo, load, work_dir, noisy_above=args.noisy_above, redos=args.redos)
            bench.run_rows(topo.rows, args.warmup_requests, args.seconds, args.reps)
        # every sidecar has stopped (and flushed its spans and log lines)
        measured = [row for row in topo.rows if row.key not in bench.broken]
        summaries = [report.summarize(row, bench.samples) for row in measured]
        calls = sum(s.requests for s in bench.samples if s.row == "all")
        log_lines = sum(len(p.read_text().splitlines()) for p in work_dir.glob("access-all-*.log"))
        other = [s.other_cpu_share for s in bench.samples if s.rep > 0 and not s.discarded]
        info = (
            f"- machine: {run.machine_description()}; h2load {load} -t 1, about {args.seconds:g} s per run, "
            f"{args.reps} runs per row interleaved, medians shown; other load during the runs kept: median "
            f"{statistics.median(other) if other else 0:.2f} cores"
        )
        text = render(info, summaries, counter.spans, log_lines, calls)
        if bench.broken or any(s.problems for s in bench.samples):
            text += "\n## Problems\n\n" + "\n".join(report.problems_section(bench.samples)) + "\n"
            text += "".join(f"- row {k} left out: {why}\n" for k, why in bench.broken.items())
        print("\n" + text)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"bench: report written to {args.out}")
        return 0 if not bench.broken else 1
    finally:
        receiver.stop(None)
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
