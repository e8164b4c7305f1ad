"""One measured h2load run through one row, with everything read around it: each process's CPU
time and memory, the machine's busy time, and the gRPC outcome of the calls as the proxies saw them."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import grpc_check, h2load, procstat
from bench.topology import Proxy, Row, Topology, sidecar_stats

H2LOAD_TIMEOUT_FLOOR = 30.0


@dataclass
class Sample:
    row: str
    rep: int  # 0 for the warm-up
    command: str
    requests: int  # calls h2load saw complete
    req_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: dict[str, float]  # by proxy label
    rss_bytes: dict[str, int]  # by proxy label, right after the run
    app_cpu_us_per_req: float
    h2load_cpu_us_per_req: float
    other_cpu_share: float  # busy CPU time of everything else on the machine, in cores, during the run
    problems: list[str] = field(default_factory=list)
    discarded: bool = False  # re-run because the machine was busy with other work; not in the medians


def _status_counts(stats: dict[str, Any]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for direction, services in stats.get("calls", {}).items():
        for service, entry in services.items():
            for status, n in entry.get("by_status", {}).items():
                counts[f"{direction}/{service}/grpc-status {status}"] += n
    for name, n in stats.get("counters", {}).items():
        counts[f"counter {name}"] += n
    return counts


class RowProbe:
    """What the proxies of a row report about the calls: read before a run, compared after it."""

    def __init__(self, row: Row) -> None:
        self.row = row
        self._stats: dict[str, Counter[str]] = {}
        self._nginx_lines: dict[str, int] = {}

    def before(self) -> None:
        for proxy in self.row.proxies:
            if proxy.admin:
                self._stats[proxy.label] = _status_counts(sidecar_stats(proxy.admin))
            if proxy.nginx:
                self._nginx_lines[proxy.label] = len(proxy.nginx.not_ok_lines())

    def problems(self, expected_ok: int) -> list[str]:
        found = []
        for proxy in self.row.proxies:
            if proxy.admin:
                found += self._sidecar_problems(proxy, expected_ok)
            if proxy.nginx:
                lines = proxy.nginx.not_ok_lines()[self._nginx_lines[proxy.label] :]
                if lines:
                    shown = "; ".join(lines[:3])
                    found.append(f"{proxy.label}: {len(lines)} calls without grpc-status 0 (e.g. {shown})")
        return found

    def _sidecar_problems(self, proxy: Proxy, expected_ok: int) -> list[str]:
        assert proxy.admin is not None
        delta = _status_counts(sidecar_stats(proxy.admin))
        delta.subtract(self._stats[proxy.label])
        changed = {k: v for k, v in delta.items() if v}
        ok = sum(v for k, v in changed.items() if k.endswith("grpc-status 0"))
        others = {k: v for k, v in changed.items() if not k.endswith("grpc-status 0")}
        found = []
        if others:
            found.append(f"{proxy.label} /stats: {others}")
        if ok != expected_ok:
            found.append(f"{proxy.label} /stats counted {ok} OK calls, h2load completed {expected_ok}")
        return found


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    return {label: procstat.cpu_seconds(pid) for label, pid in pids.items()}


def _children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def run_once(
    topo: Topology, row: Row, *, rep: int, body: Path, load: h2load.Load, requests: int, log_file: Path
) -> Sample:
    grpc_check.check_path(row.entry)  # a few real gRPC calls first: they must be OK
    probe = RowProbe(row)
    probe.before()
    pids = {proxy.label: proxy.pid for proxy in row.proxies}
    pids["app"] = topo.app_pid
    cpu0, h2_cpu0, machine0 = _cpu(pids), _children_cpu(), procstat.MachineTimes.read()
    expected_seconds = requests / 500.0  # generous: the slowest path does more than 500 req/s
    result = h2load.run(
        f"http://{row.entry}{grpc_check.METHOD_PATH}", body, load, requests, log_file,
        timeout=max(H2LOAD_TIMEOUT_FLOOR, 3 * expected_seconds),
    )  # fmt: skip
    cpu1, h2_cpu1, machine1 = _cpu(pids), _children_cpu(), procstat.MachineTimes.read()
    rss = {proxy.label: procstat.rss_bytes(proxy.pid) for proxy in row.proxies}
    summary = result.summary
    done = max(summary.succeeded, 1)
    per_req = {label: (cpu1[label] - cpu0[label]) / done * 1e6 for label in pids}
    ours = sum(cpu1[label] - cpu0[label] for label in pids) + (h2_cpu1 - h2_cpu0)
    other = max(0.0, machine1.busy_seconds_since(machine0) - ours) / max(summary.seconds, 1e-9)

    problems = probe.problems(summary.succeeded)
    if summary.succeeded != requests or summary.failed or summary.errored or summary.timeout:
        problems.append(
            f"h2load: {summary.total} total, {summary.succeeded} succeeded, {summary.failed} failed, "
            f"{summary.errored} errored, {summary.timeout} timeout"
        )
    if summary.status_other:
        problems.append(f"h2load: {summary.status_other} responses with a non-2xx HTTP status")
    app_us = per_req.pop("app")
    return Sample(
        row=row.key,
        rep=rep,
        command=result.command,
        requests=summary.succeeded,
        req_per_s=summary.req_per_s,
        p50_ms=result.percentile_ms(50),
        p99_ms=result.percentile_ms(99),
        cpu_us_per_req=per_req,
        rss_bytes=rss,
        app_cpu_us_per_req=app_us,
        h2load_cpu_us_per_req=(h2_cpu1 - h2_cpu0) / done * 1e6,
        other_cpu_share=other,
        problems=problems,
    )
