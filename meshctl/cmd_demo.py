"""`meshctl demo`: run the example mesh on loopback, drive load through it and show what
the client sees, then stop every process it started."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshctl import procs

if TYPE_CHECKING:
    from meshctl.demo.mesh import DemoMesh

PLAIN_INTERVAL = 2.0
LIVE_INTERVAL = 0.5


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the example mesh (users, orders, sidecars, load) on loopback",
        description=(
            "Start a fresh CA, the users and orders apps each behind a sidecar, and a load generator "
            "calling both through its own sidecar; show calls, errors, req/s, latency and the versions "
            "that answered; stop everything at the end, on Ctrl-C or on SIGTERM. Exits 0 when under 1%% "
            "of calls failed."
        ),
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load (default 20)")
    parser.add_argument(
        "--rate", type=float, default=50.0, help="calls per second, all services (default 50)"
    )
    parser.add_argument(
        "--dir", type=Path, help="data dir for certs, configs and logs (default: a temp dir, kept on failure)"
    )
    parser.add_argument(
        "--non-interactive",
        action="store_true",
        help="print plain progress lines instead of a live table (automatic when stdout is not a terminal)",
    )
    parser.add_argument("--pids-file", type=Path, help="write the started processes' pids here (JSON)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.duration <= 0 or args.rate <= 0:
        print("meshctl demo: --duration and --rate must be positive", file=sys.stderr)
        return 2
    interactive = not args.non_interactive and sys.stdout.isatty()
    temporary = args.dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="grpc-mesh-demo-")) if temporary else args.dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)

    from meshctl.demo import mesh as demo_mesh

    demo_mesh.ensure_stubs_importable()
    from control_plane.ca import CAError
    from meshctl.demo import view

    ok = False
    try:
        with procs.ProcessGroup(grace=demo_mesh.STOP_GRACE) as group:
            print(f"starting the demo mesh in {data_dir}", flush=True)
            launcher = demo_mesh.Launcher(group, data_dir, on_ready=_announce)
            try:
                mesh = launcher.launch()
            finally:
                if args.pids_file is not None:
                    args.pids_file.write_text(json.dumps(group.pids))
            print("\n".join(view.where_to_look(mesh)), flush=True)
            ok = asyncio.run(_drive(mesh, args.duration, args.rate, interactive))
            print("stopping the mesh", flush=True)
        unclean = {name: code for name, code in group.exit_codes.items() if code != 0}
        if unclean:
            print(f"meshctl demo: stopped, but not cleanly (exit codes): {unclean}", file=sys.stderr)
        print("all demo processes stopped", flush=True)
    except procs.ProcessError as err:
        print(f"meshctl demo: a process did not start: {err}", file=sys.stderr)
        return 1
    except CAError as err:
        print(f"meshctl demo: could not issue certificates: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("meshctl demo: interrupted while starting; every process started was stopped", file=sys.stderr)
        return 130
    finally:
        if temporary and ok:
            shutil.rmtree(data_dir, ignore_errors=True)
        elif temporary:
            print(f"kept {data_dir} (logs under logs/) for a look", file=sys.stderr)
    return 0 if ok else 1


def _announce(name: str, info: dict[str, Any]) -> None:
    shown = {k: v for k, v in info.items() if k != "pid"}
    print(f"  {name:<16} ready  {' '.join(f'{k}={v}' for k, v in shown.items())}", flush=True)


@contextmanager
def _signals_set(stop: asyncio.Event) -> Iterator[None]:
    """While the load runs, SIGINT/SIGTERM end it early (summary still printed) instead of raising."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous = {
        sig: signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def _drive(mesh: DemoMesh, duration: float, rate: float, interactive: bool) -> bool:
    from rich.live import Live

    from meshctl.demo import view
    from meshctl.demo.loadgen import LoadGenerator

    generator = LoadGenerator(mesh.entry, rate=rate)
    stop = asyncio.Event()
    with _signals_set(stop):
        task = asyncio.create_task(generator.run(stop, duration))
        if interactive:
            with Live(auto_refresh=False) as live:
                while not task.done():
                    await asyncio.wait({task}, timeout=LIVE_INTERVAL)
                    now = time.monotonic()
                    title = (
                        f"grpc-mesh demo: {now - generator.started:.0f}s of {duration:.0f}s (Ctrl-C stops)"
                    )
                    live.update(view.live_table(generator.stats, now, generator.started, title), refresh=True)
        else:
            while not task.done():
                await asyncio.wait({task}, timeout=PLAIN_INTERVAL)
                print(
                    "\n".join(view.plain_lines(generator.stats, time.monotonic(), generator.started)),
                    flush=True,
                )
        await task
    elapsed = time.monotonic() - generator.started
    lines = view.summary_lines(generator.stats, elapsed, stopped_early=stop.is_set())
    lines += view.sidecar_stats_lines(mesh.sidecars["loadgen"].admin)
    print("\n".join(lines), flush=True)
    return view.passed(generator.stats)
