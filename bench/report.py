"""Medians over the repetitions, the markdown report, and the two ratios the targets are set on."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from bench.measure import Sample
from bench.topology import Row

MESH_ROW, NGINX_ROW, DIRECT_ROW = "3", "5", "1"
CPU_RATIO_TARGET = 2.5  # sidecar CPU per hop / nginx CPU per hop, two-hop mTLS path: at most this
THROUGHPUT_TARGET = 0.6  # two-sidecar req/s / direct req/s: at least this


@dataclass(frozen=True, slots=True)
class RowSummary:
    row: Row
    reps: int
    req_per_s: float
    req_per_s_range: tuple[float, float]
    p50_ms: float
    p99_ms: float
    cpu_us: dict[str, float]  # median µs per request, by proxy label
    rss_mib: dict[str, float]  # median, by proxy label
    app_cpu_us: float

    @property
    def cpu_per_hop_us(self) -> float | None:
        """Proxy CPU per request averaged over the row's proxies (None without proxies)."""
        return sum(self.cpu_us.values()) / len(self.cpu_us) if self.cpu_us else None


def summarize(row: Row, samples: Sequence[Sample]) -> RowSummary:
    mine = [s for s in samples if s.row == row.key and s.rep > 0 and not s.discarded]
    if not mine:
        raise ValueError(f"no measured samples for row {row.key}")
    rates = [s.req_per_s for s in mine]
    labels = [p.label for p in row.proxies]
    return RowSummary(
        row=row,
        reps=len(mine),
        req_per_s=statistics.median(rates),
        req_per_s_range=(min(rates), max(rates)),
        p50_ms=statistics.median(s.p50_ms for s in mine),
        p99_ms=statistics.median(s.p99_ms for s in mine),
        cpu_us={label: statistics.median(s.cpu_us_per_req[label] for s in mine) for label in labels},
        rss_mib={label: statistics.median(s.rss_bytes[label] for s in mine) / 2**20 for label in labels},
        app_cpu_us=statistics.median(s.app_cpu_us_per_req for s in mine),
    )


def _per_label(values: dict[str, float], fmt: str) -> str:
    return ", ".join(f"{label} {format(v, fmt)}" for label, v in values.items()) or "—"


def table(summaries: Sequence[RowSummary]) -> str:
    lines = [
        "| # | path | req/s (min-max) | p50 ms | p99 ms | proxy CPU µs/req | per hop | proxy RSS MiB "
        "| app CPU µs/req |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        hop = s.cpu_per_hop_us
        kinds = {p.kind for p in s.row.proxies}
        per_hop = f"{hop:.0f}" if hop is not None and len(kinds) == 1 else "—"
        low, high = s.req_per_s_range
        lines.append(
            f"| {s.row.key} | {s.row.path} | {s.req_per_s:.0f} ({low:.0f}-{high:.0f}) | {s.p50_ms:.2f} "
            f"| {s.p99_ms:.2f} | {_per_label(s.cpu_us, '.0f')} | {per_hop} | {_per_label(s.rss_mib, '.1f')} "
            f"| {s.app_cpu_us:.0f} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Ratios:
    cpu_per_hop: float | None  # sidecar / nginx on the two-hop mTLS path
    throughput: float | None  # two sidecars / direct
    nginx_throughput: float | None  # two nginx hops / direct, for scale

    def lines(self) -> list[str]:
        out = []
        if self.cpu_per_hop is not None:
            verdict = "meets" if self.cpu_per_hop <= CPU_RATIO_TARGET else "misses"
            out.append(
                f"- sidecar CPU per hop ÷ nginx CPU per hop (rows 3 ÷ 5): **{self.cpu_per_hop:.2f}x** "
                f"({verdict} the target ≤ {CPU_RATIO_TARGET}x)"
            )
        if self.throughput is not None:
            verdict = "meets" if self.throughput >= THROUGHPUT_TARGET else "misses"
            out.append(
                f"- two-sidecar throughput ÷ direct (rows 3 ÷ 1): **{self.throughput:.2f}x** "
                f"({verdict} the target ≥ {THROUGHPUT_TARGET}x)"
            )
        if self.nginx_throughput is not None:
            out.append(f"- for scale, two nginx hops ÷ direct (rows 5 ÷ 1): {self.nginx_throughput:.2f}x")
        return out


def ratios(summaries: Sequence[RowSummary]) -> Ratios:
    by_key = {s.row.key: s for s in summaries}
    mesh, ngx, direct = by_key.get(MESH_ROW), by_key.get(NGINX_ROW), by_key.get(DIRECT_ROW)
    cpu = None
    if mesh and ngx and mesh.cpu_per_hop_us is not None and ngx.cpu_per_hop_us:
        cpu = mesh.cpu_per_hop_us / ngx.cpu_per_hop_us
    throughput = mesh.req_per_s / direct.req_per_s if mesh and direct and direct.req_per_s else None
    nginx_throughput = ngx.req_per_s / direct.req_per_s if ngx and direct and direct.req_per_s else None
    return Ratios(cpu, throughput, nginx_throughput)


def problems_section(samples: Sequence[Sample]) -> list[str]:
    lines = []
    for s in samples:
        for problem in s.problems:
            kind = "warm-up" if s.rep == 0 else f"rep {s.rep}"
            lines.append(f"- row {s.row}, {kind}: {problem}  \n  `{s.command}`")
    return lines


@dataclass(frozen=True, slots=True)
class RunInfo:
    """How the run was made, for the report's header."""

    started: datetime
    machine: str
    software: str
    load: str
    seconds: float
    reps: int
    noisy_above: float


def render(
    info: RunInfo,
    all_rows: Sequence[Row],
    measured_rows: Sequence[Row],
    samples: Sequence[Sample],
    broken: dict[str, str],
) -> str:
    summaries = [summarize(row, samples) for row in measured_rows]
    measured = [s for s in samples if s.rep > 0 and not s.discarded]
    redone = sum(s.discarded for s in samples)
    lines = [
        f"# grpc-mesh benchmark, {info.started:%Y-%m-%d %H:%M} UTC",
        "",
        f"- machine: {info.machine}; {info.software}",
        "- call: demo.v1.Users/GetUser of one stored user (the grpcio users app, the same process for "
        f"every row); h2load {info.load} -t 1, about {info.seconds:g} s per run; {info.reps} runs per "
        "row, interleaved (order rotated each round) after two warm-up runs per row; medians shown",
        "- every proxy is one process: sidecar = `meshctl sidecar` (uvloop), nginx = `master_process off`",
        "- CPU = utime + stime of the process over the run / calls completed; RSS = VmRSS after the run",
    ]
    if measured:
        other = [s.other_cpu_share for s in measured]
        h2 = [s.h2load_cpu_us_per_req for s in measured]
        lines.append(
            f"- other load on the machine during the runs kept (busy cores, not ours nor h2load's): median "
            f"{statistics.median(other):.2f}, max {max(other):.2f}; {redone} runs were run again because "
            f"it exceeded {info.noisy_above:g}; h2load itself used a median "
            f"{statistics.median(h2):.0f} us of CPU per call"
        )
    lines += ["", table(summaries), ""]
    lines += ratios(summaries).lines()
    lines += ["", "## Problems", ""]
    problems = [f"- row {key} left out: {why}" for key, why in broken.items()] + problems_section(samples)
    lines += problems or [
        "none: every call h2load completed was counted OK by the proxies on its path, and every "
        "grpcio check before a run passed"
    ]
    lines += ["", "## Rows", ""]
    lines += [f"- **{row.key}** {row.name}: {row.path}" for row in all_rows]
    lines += ["", "## Every run", "", every_run(samples)]
    return "\n".join(lines) + "\n"


def every_run(samples: Sequence[Sample]) -> str:
    """One line per h2load run, warm-ups included, in the order they ran: the spread behind the medians."""
    lines = [
        "| row | run | calls | req/s | p50 ms | p99 ms | proxy CPU µs/req | app CPU µs/req | other load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in samples:
        lines.append(
            f"| {s.row} | {_run_name(s)} | {s.requests} | {s.req_per_s:.0f} "
            f"| {s.p50_ms:.2f} | {s.p99_ms:.2f} | {_per_label(s.cpu_us_per_req, '.0f')} "
            f"| {s.app_cpu_us_per_req:.0f} | {s.other_cpu_share:.2f} |"
        )
    return "\n".join(lines)


def _run_name(sample: Sample) -> str:
    if sample.rep == 0:
        return "warm-up"
    return f"{sample.rep} (run again)" if sample.discarded else str(sample.rep)
