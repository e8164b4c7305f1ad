"""What `meshctl demo` shows: where to look, the live per-service-and-version table (rich, or
plain lines when not on a terminal) while a step runs, and the closing summary."""

from __future__ import annotations

import shlex
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from meshctl.demo.loadgen import ServiceStats
from meshctl.demo.mesh import DemoMesh
from meshctl.demo.scrape import Row
from meshctl.demo.story import Display, LiveView, StepResult

PLAIN_INTERVAL = 2.0
BAR_WIDTH = 10


def versions_text(versions: Counter[str]) -> str:
    total = sum(versions.values())
    if not total:
        return "-"
    return " ".join(f"{v} {n * 100 / total:.0f}%" for v, n in sorted(versions.items()))


def tool(name: str) -> str:
    """How to run a tool this checkout installs next to its Python (`.venv/bin/...`), else its name."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return shlex.quote(str(here))
    return name if shutil.which(name) else f"{shlex.quote(sys.executable)} -m {name}"


def where_to_look(mesh: DemoMesh, token_file: Path) -> list[str]:
    entry = mesh.entry
    api = mesh.api
    grpcurl = tool("grpcurl")
    meshctl = tool("meshctl")
    lines = [
        f"Mesh running (data, certificates and logs in {mesh.data_dir}).",
        f"Control plane: gRPC {api.grpc}, REST {api.url} (OpenAPI at /openapi.json, Prometheus at /metrics)",
        f"  export MESHCTL_SERVER={api.url} MESHCTL_TOKEN=$(cat {shlex.quote(str(token_file))})",
        f"  {meshctl} status",
        f"  {meshctl} get vs users -o yaml; {meshctl} history vs users",
        f'  {grpcurl} -plaintext -H "authorization: Bearer $MESHCTL_TOKEN" {api.grpc} list',
        f"Call users through the mesh (the load generator's sidecar, outbound {entry}):",
        f"  {grpcurl} -plaintext -authority users {entry} list",
        f'  {grpcurl} -plaintext -authority users -d \'{{"id": "user-1"}}\' {entry} demo.v1.Users/GetUser',
        f"  {grpcurl} -plaintext -authority users -H 'x-canary: true' -d '{{\"id\": \"user-1\"}}' "
        f"{entry} demo.v1.Users/GetUser",
        f'  {grpcurl} -plaintext -authority orders -d \'{{"user_id": "user-1"}}\' {entry} '
        "demo.v1.Orders/ListOrders",
        "Sidecars (admin port: /metrics, /config_dump, /clusters, /stats, /ready):",
    ]
    for instance, sidecar in mesh.sidecars.items():
        base = f"http://{sidecar.admin}"
        lines.append(f"  {instance:<11} {base}/metrics  {base}/config_dump")
    lines.append(f"Logs: {mesh.log_dir}")
    return lines


def _bar(share: float) -> str:
    filled = round(share * BAR_WIDTH)
    return "█" * filled + "·" * (BAR_WIDTH - filled)


def rows_table(title: str, rows: list[Row], counters: Mapping[str, float]) -> Table:
    table = Table(title=title, title_justify="left", caption=_counters_text(counters), caption_justify="left")
    for column in ("service", "version", "req/s", "success", "p50 ms", "p99 ms", "share"):
        table.add_column(column, justify="left" if column in ("service", "version", "share") else "right")
    for r in rows:
        success = f"{r.success:.2%}"
        table.add_row(
            r.service,
            r.version,
            f"{r.rate:.1f}",
            success if r.success >= 0.99 else f"[red]{success}[/red]",
            f"{r.p50:.1f}",
            f"{r.p99:.1f}",
            f"{r.share:4.0%} {_bar(r.share)}",
        )
    return table


def _counters_text(counters: Mapping[str, float]) -> str:
    if not counters:
        return ""
    return "retries/ejections counted by the sidecars: " + ", ".join(
        f"{k} +{v:.0f}" for k, v in counters.items()
    )


def client_text(client: Mapping[str, ServiceStats]) -> str:
    """What the load generator saw, per caller class: calls, errors, versions that answered."""
    return "client view: " + "; ".join(
        f"{name} {s.calls} calls, {s.errors} errors, {versions_text(s.versions)}"
        for name, s in client.items()
        if s.calls
    )


def plain_rows(rows: list[Row]) -> list[str]:
    return [
        f"    {r.service:<7} {r.version:<7} req/s={r.rate:6.1f} success={r.success:7.2%} "
        f"p50={r.p50:6.1f}ms p99={r.p99:6.1f}ms share={r.share:6.1%}"
        for r in rows
    ]


class _RichLive(LiveView):
    def __init__(
        self, console: Console, step: StepResult, client: Callable[[], Mapping[str, ServiceStats]]
    ) -> None:
        self.step = step
        self.client = client
        self.live = Live(console=console, auto_refresh=False, transient=False)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def update(self, elapsed: float, rows: list[Row], counters: Mapping[str, float]) -> None:
        title = f"step {self.step.number}: {self.step.title}, {elapsed:.0f}s (last 5s; Ctrl-C stops)"
        body = Group(rows_table(title, rows, counters), Text(client_text(self.client()), style="dim"))
        self.live.update(body, refresh=True)


class _PlainLive(LiveView):
    def __init__(self, step: StepResult) -> None:
        self.step = step
        self.next_print = time.monotonic() + PLAIN_INTERVAL

    def update(self, elapsed: float, rows: list[Row], counters: Mapping[str, float]) -> None:
        now = time.monotonic()
        if now < self.next_print:
            return
        self.next_print = now + PLAIN_INTERVAL
        label = "exploring" if self.step.number == "-" else f"step {self.step.number}"
        lines = [f"  t={elapsed:4.1f}s {label} (last 5s, from the sidecars' /metrics):"]
        lines += plain_rows(rows)
        if counters:
            lines.append("    " + _counters_text(counters))
        print("\n".join(lines), flush=True)


class TerminalDisplay(Display):
    """A rich live table on a terminal; plain lines every few seconds otherwise."""

    def __init__(self, interactive: bool, client: Callable[[], Mapping[str, ServiceStats]] = dict) -> None:
        self.interactive = interactive
        self.console = Console()
        self.client = client

    def say(self, *lines: str) -> None:
        if self.interactive:
            for line in lines:
                self.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print("\n".join(lines), flush=True)

    def live(self, step: StepResult) -> LiveView:
        if self.interactive:
            return _RichLive(self.console, step, self.client)
        return _PlainLive(step)

    def finished(self, step: StepResult) -> None:
        # On a terminal the last live table stays on screen.
        lines = [] if self.interactive or not step.seconds else step_summary(step)
        lines += [f"  note: {n}" for n in step.notes]
        lines += [f"  {'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}" for c in step.checks]
        self.say(*lines)


def step_summary(result: StepResult) -> list[str]:
    """A finished step: its rows over the whole measurement and what the client saw."""
    lines = [f"  measured over {result.seconds:.1f}s, from the calling sidecars' /metrics:"]
    lines += plain_rows(result.rows)
    if result.client:
        lines.append("  " + client_text(result.client))
    return lines


def summary_lines(results: list[StepResult]) -> list[str]:
    lines = ["", "Summary:"]
    for r in results:
        failed = [c.name for c in r.checks if not c.ok]
        verdict = "ok" if not failed else "FAIL (" + ", ".join(failed) + ")"
        lines.append(f"  step {r.number:<3} {r.title:<40} {verdict}")
    passed = all(r.passed for r in results)
    lines.append(f"result: {'PASS' if passed else 'FAIL'}: {len(results)} steps")
    return lines
