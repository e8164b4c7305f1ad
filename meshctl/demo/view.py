"""What `meshctl demo` shows: where to look, the live per-service table (rich, or plain
lines when not on a terminal) and the closing summary."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import Mapping

from rich.table import Table

from meshctl.demo.loadgen import ServiceStats
from meshctl.demo.mesh import DemoMesh

MAX_ERROR_RATE = 0.01


def versions_text(versions: Counter[str]) -> str:
    total = sum(versions.values())
    if not total:
        return "-"
    return " ".join(f"{v} {n * 100 / total:.0f}%" for v, n in sorted(versions.items()))


def where_to_look(mesh: DemoMesh) -> list[str]:
    entry = mesh.entry
    lines = [
        f"Mesh running in {mesh.data_dir}",
        f"  apps: {', '.join(f'{name} {addr}' for name, addr in mesh.apps.items())}",
        f"  call the mesh through the load generator's sidecar (outbound {entry}):",
        f"    grpcurl -plaintext -authority users {entry} list",
        f"    grpcurl -plaintext -authority users -d '{{\"limit\": 3}}' {entry} demo.v1.Users/ListUsers",
        f"    grpcurl -plaintext -authority orders {entry} demo.v1.Orders/ListOrders",
        "  sidecar admin:",
    ]
    for service, sidecar in mesh.sidecars.items():
        base = f"http://{sidecar.admin}"
        lines.append(f"    {service:<8} {base}/stats  {base}/config_dump  {base}/ready")
    lines.append(f"  logs: {mesh.log_dir}")
    return lines


def live_table(stats: Mapping[str, ServiceStats], now: float, started: float, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("service", "calls", "errors", "req/s", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "service" else "right")
    table.add_column("versions seen")
    for service, s in stats.items():
        rate, p50, p99 = s.window(now, started)
        errors = f"[red]{s.errors}[/red]" if s.errors else "0"
        table.add_row(
            service,
            str(s.calls),
            errors,
            f"{rate:.1f}",
            f"{p50:.1f}",
            f"{p99:.1f}",
            versions_text(s.versions),
        )
    return table


def plain_lines(stats: Mapping[str, ServiceStats], now: float, started: float) -> list[str]:
    lines = []
    for service, s in stats.items():
        rate, p50, p99 = s.window(now, started)
        lines.append(
            f"t={now - started:5.1f}s {service:<7} calls={s.calls} errors={s.errors} req/s={rate:.1f} "
            f"p50={p50:.1f}ms p99={p99:.1f}ms versions={versions_text(s.versions)}"
        )
    return lines


def error_rate(stats: Mapping[str, ServiceStats]) -> tuple[int, int]:
    """(errors, calls) over all services."""
    return sum(s.errors for s in stats.values()), sum(s.calls for s in stats.values())


def passed(stats: Mapping[str, ServiceStats]) -> bool:
    """Every service was called and fewer than 1% of all calls failed."""
    errors, calls = error_rate(stats)
    return all(s.calls for s in stats.values()) and errors < MAX_ERROR_RATE * calls


def summary_lines(stats: Mapping[str, ServiceStats], elapsed: float, *, stopped_early: bool) -> list[str]:
    how = "stopped early" if stopped_early else "done"
    lines = [f"summary ({how} after {elapsed:.1f}s, measured by the client):"]
    for service, s in stats.items():
        p50, p99 = s.overall()
        codes = ", ".join(f"{code} x{n}" for code, n in s.codes.most_common())
        lines.append(
            f"  {service:<7} calls={s.calls} errors={s.errors} req/s={s.calls / max(elapsed, 1e-3):.1f} "
            f"p50={p50:.1f}ms p99={p99:.1f}ms versions={versions_text(s.versions)}"
            + (f" ({codes})" if codes else "")
        )
    errors, calls = error_rate(stats)
    pct = errors * 100 / calls if calls else 0.0
    verdict = "PASS" if passed(stats) else "FAIL"
    lines.append(
        f"result: {verdict}: {errors} errors in {calls} calls ({pct:.2f}%, limit {MAX_ERROR_RATE:.0%})"
    )
    return lines


def sidecar_stats_lines(admin: str, timeout: float = 2.0) -> list[str]:
    """The load generator sidecar's own counters from /stats, to compare with the client's view.
    Empty when the endpoint is missing or answers in another shape."""
    try:
        with urllib.request.urlopen(f"http://{admin}/stats", timeout=timeout) as reply:
            calls = json.loads(reply.read())["calls"]
        calls = calls.get("outbound", calls)  # the sidecar splits its counts by direction
        if not calls:
            return []
        lines = ["as counted by the load generator's sidecar (/stats):"]
        for service, c in sorted(calls.items()):
            latency = c.get("latency_ms", {})
            lines.append(
                f"  {service:<7} total={c['total']} errors={c['errors']} "
                f"p50={latency.get('p50', 0):.1f}ms p99={latency.get('p99', 0):.1f}ms"
            )
        return lines
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
