"""``meshctl stat`` and ``meshctl top``: request rate, success rate and p50/p99 latency per
service and version, read from the sidecars' `/metrics` (meshctl.mesh_stats). The control plane
says which sidecars there are (their admin addresses, as in ``meshctl status``); ``--admin``
names sidecars directly instead (static mode, no control plane).

``stat`` prints once: two scrapes ``--interval`` seconds apart make the window (0: one scrape,
the numbers since the sidecars started). ``top`` refreshes every ``--interval`` seconds, in place
on a terminal and as successive tables otherwise.

Exit codes: 0 shown, 1 the control plane or every sidecar could not be read, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from meshctl import mesh_stats
from meshctl.api_client import ApiError, ConnectionArgumentsError, add_connection_arguments, client_from_args
from meshctl.cmd_status import fail
from meshctl.mesh_stats import Row, Scrape
from meshctl.tables import format_table

Clock = Callable[[], float]
Sleep = Callable[[float], None]
HEADERS = ("SERVICE", "VERSION", "SIDECARS", "REQUESTS", "RPS", "SUCCESS", "P50", "P99", "TOTAL")


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _common(parser: argparse.ArgumentParser, interval: float) -> None:
    parser.add_argument(
        "--interval",
        type=_non_negative_seconds,
        default=interval,
        metavar="SECONDS",
        help=f"seconds between the scrapes that make a window (default: {interval:g})",
    )
    parser.add_argument(
        "--reporter",
        choices=mesh_stats.REPORTERS,
        default="destination",
        help="count calls as the serving sidecars saw them (destination, the default) or as the "
        "calling sidecars did (source: includes calls that never reached a server)",
    )
    parser.add_argument("--service", metavar="NAME", help="only this destination service")
    parser.add_argument(
        "--admin",
        action="append",
        metavar="HOST:PORT",
        default=[],
        help="read this sidecar's admin port (repeatable) instead of asking the control plane",
    )
    add_connection_arguments(parser)


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> None:
    """Add ``stat`` and ``top``; each sets ``run`` to a ``callable(args) -> int``."""
    epilog = (
        "Columns: REQUESTS, RPS, SUCCESS (share of calls ending with gRPC status OK), P50 and P99 "
        "(milliseconds, interpolated within the istio_request_duration_milliseconds buckets) are "
        "over the window; TOTAL counts every call since the sidecars started. SIDECARS: how many "
        "sidecars reported calls for that service version."
    )
    stat = subparsers.add_parser(
        "stat",
        help="request rate, success rate and p50/p99 per service and version, once",
        description="Read every sidecar's /metrics twice, --interval seconds apart, and print each "
        "service version's request rate, success rate and latency over that window "
        "(--interval 0: one read, since the sidecars started).",
        epilog=epilog,
    )
    _common(stat, 1.0)
    stat.add_argument(
        "-o", "--output", choices=("table", "json"), default="table", help="output format (default: table)"
    )
    stat.set_defaults(run=functools.partial(_run_stat, clock=clock, sleep=sleep))
    top = subparsers.add_parser(
        "top",
        help="the stat table, refreshed live",
        description="The `meshctl stat` table, refreshed every --interval seconds over the last "
        "interval: in place on a terminal, one table after another otherwise. Ctrl-C stops.",
        epilog=epilog,
    )
    _common(top, 2.0)
    top.add_argument(
        "--count", type=int, default=0, metavar="N", help="stop after N refreshes (default: until Ctrl-C)"
    )
    top.set_defaults(run=functools.partial(_run_top, clock=clock, sleep=sleep))


class _Unavailable(Exception):
    """Nothing could be read: the message says why."""


class _Reader:
    """Where the sidecars are and how to read them, for one command."""

    def __init__(self, args: argparse.Namespace, fetch: Callable[[str], str] = mesh_stats.fetch_metrics):
        self.args = args
        self.fetch = fetch
        self.client = None if args.admin else client_from_args(args)

    def addresses(self) -> list[str]:
        if self.client is None:
            return list(dict.fromkeys(self.args.admin))
        try:
            listing = self.client.sidecars()
        except ApiError as exc:
            raise _Unavailable(str(exc)) from None
        return sorted({s.admin_address for s in listing.sidecars if s.connected and s.admin_address})

    def read(self) -> Scrape:
        addresses = self.addresses()
        if not addresses:
            return {}
        result, errors = mesh_stats.scrape(addresses, self.args.reporter, self.fetch)
        for error in errors:
            print(f"meshctl {self.args.command}: warning: cannot read {error}", file=sys.stderr)
        if not result:
            raise _Unavailable(f"none of the {len(addresses)} sidecars' /metrics could be read")
        return result

    def rows(self, latest: Scrape, earlier: Scrape | None, seconds: float) -> list[Row]:
        out = mesh_stats.rows(latest, earlier, seconds)
        if self.args.service:
            out = [r for r in out if r.service == self.args.service]
        return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}ms"


def render(rows: Sequence[Row]) -> str:
    if not rows:
        return "no calls reported"
    return format_table(
        HEADERS,
        [
            [
                r.service,
                r.version,
                str(r.sidecars),
                str(int(r.requests)),
                "-" if r.rate is None else f"{r.rate:.1f}",
                "-" if r.success_rate is None else f"{r.success_rate * 100:.2f}%",
                _ms(r.p50_ms),
                _ms(r.p99_ms),
                str(int(r.total)),
            ]
            for r in rows
        ],
    )


def _window(reader: _Reader, interval: float, clock: Clock, sleep: Sleep) -> list[Row]:
    first = reader.read()
    if interval == 0:
        return reader.rows(first, None, 0.0)
    started = clock()
    sleep(interval)
    latest = reader.read()
    return reader.rows(latest, first, clock() - started)


def _run_stat(args: argparse.Namespace, *, clock: Clock, sleep: Sleep) -> int:
    try:
        reader = _Reader(args)
    except ConnectionArgumentsError as exc:
        return fail("stat", exc, 2)
    try:
        rows = _window(reader, args.interval, clock, sleep)
    except _Unavailable as exc:
        return fail("stat", exc)
    if args.output == "json":
        print(
            json.dumps(
                {"reporter": args.reporter, "window": args.interval, "rows": [r.to_json() for r in rows]},
                indent=2,
            )
        )
    else:
        print(render(rows))
    return 0


def _run_top(args: argparse.Namespace, *, clock: Clock, sleep: Sleep) -> int:
    if args.count < 0:
        return fail("top", "--count: expected N >= 0", 2)
    if args.interval == 0:
        return fail("top", "--interval: top needs a window, expected seconds > 0", 2)
    try:
        reader = _Reader(args)
    except ConnectionArgumentsError as exc:
        return fail("top", exc, 2)
    live: Any = None
    try:
        earlier = reader.read()
        started = clock()
        shown = 0
        if sys.stdout.isatty():
            from rich.live import Live
            from rich.text import Text

            live = Live(Text("reading the sidecars..."), auto_refresh=False)
            live.start()
        while args.count == 0 or shown < args.count:
            sleep(args.interval)
            latest = reader.read()
            now = clock()
            text = render(reader.rows(latest, earlier, now - started))
            title = f"meshctl top: last {args.interval:g}s, reporter={args.reporter}"
            if live is not None:
                from rich.text import Text

                live.update(Text(f"{title}\n\n{text}"), refresh=True)
            else:
                print(f"{title}\n{text}\n", flush=True)
            earlier, started = latest, now
            shown += 1
    except _Unavailable as exc:
        return fail("top", exc)
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
    return 0
