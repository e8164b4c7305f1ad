"""`meshctl demo`: run the demo mesh on loopback (a control plane, users v1 twice and v2 once,
orders, a load generator, each with its sidecar), tell a canary rollout step by step with a live
view of the sidecars' metrics, then stop every process it started."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshctl import procs

if TYPE_CHECKING:
    from meshctl.demo.mesh import DemoMesh
    from meshctl.demo.story import Story

TOKEN_TTL = timedelta(hours=12)
EXIT_INTERRUPTED = 130


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the demo mesh on loopback and tell a canary rollout step by step",
        description=(
            "Start a control plane (store and CA in the data dir), users v1 (two instances) and v2 "
            "(one), orders and a load generator, each with its sidecar; then roll users v2 out step by "
            "step through the control plane's API (all on v1, 90/10, a header route for x-canary: "
            "true, a hung v1 instance, 50/50, 100%% v2, a rollback, meshctl status), showing per "
            "service and version req/s, success rate, p50/p99 and traffic share from the sidecars' "
            "/metrics. Stops every process at the end, on Ctrl-C or on SIGTERM. Exit code 0 when every "
            "step showed what it should, 1 otherwise, 130 when interrupted."
        ),
    )
    parser.add_argument(
        "--step-seconds", type=_positive, default=10.0, help="seconds each step measures (default 10)"
    )
    parser.add_argument(
        "--rate", type=_positive, default=100.0, help="calls per second, all services (default 100)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--steps", action="store_true", help="wait for Enter before each step and at the end")
    mode.add_argument(
        "--no-story",
        action="store_true",
        help="start the mesh (all users traffic on v1) and keep it running with load until Ctrl-C",
    )
    parser.add_argument(
        "--dir", type=Path, help="data dir for the store, CA, certs, configs and logs (default: a temp dir)"
    )
    parser.add_argument(
        "--any-ports",
        action="store_true",
        help="bind every listener to a free port (default: control plane on 15010/15011, mesh entry 15001)",
    )
    parser.add_argument(
        "--non-interactive",
        action="store_true",
        help="print plain lines instead of a live table (automatic when stdout is not a terminal)",
    )
    parser.add_argument("--pids-file", type=Path, help="write the started processes' pids here (JSON)")
    parser.add_argument("--report", type=Path, help="write each step's measurements and checks here (JSON)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    interactive = not args.non_interactive and sys.stdout.isatty()
    temporary = args.dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="grpc-mesh-demo-")) if temporary else args.dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)

    from meshctl.demo import mesh as demo_mesh

    demo_mesh.ensure_stubs_importable()
    ports = demo_mesh.Ports.any() if args.any_ports else demo_mesh.Ports()
    code = 1
    try:
        with procs.ProcessGroup(grace=demo_mesh.STOP_GRACE) as group:
            print(f"starting the demo mesh in {data_dir}", flush=True)
            launcher = demo_mesh.Launcher(group, data_dir, ports=ports, on_ready=_announce)
            try:
                mesh = launcher.launch()
            finally:
                if args.pids_file is not None:
                    args.pids_file.write_text(json.dumps(group.pids))
            code = asyncio.run(_drive(mesh, group, args, interactive))
            print("stopping the mesh", flush=True)
        unclean = {name: c for name, c in group.exit_codes.items() if c != 0}
        if unclean:
            print(f"meshctl demo: stopped, but not cleanly (exit codes): {unclean}", file=sys.stderr)
        print("all demo processes stopped", flush=True)
    except demo_mesh.PortInUse as err:
        print(f"meshctl demo: {err}", file=sys.stderr)
        return 1
    except procs.ProcessError as err:
        print(f"meshctl demo: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("meshctl demo: interrupted while starting; every process started was stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if temporary and code == 0:
            shutil.rmtree(data_dir, ignore_errors=True)
        elif temporary:
            print(f"kept {data_dir} (logs under logs/) for a look", file=sys.stderr)
    return code


def _announce(name: str, info: dict[str, Any]) -> None:
    shown = {k: v for k, v in info.items() if k != "pid"}
    print(f"  {name:<16} ready  {' '.join(f'{k}={v}' for k, v in shown.items())}", flush=True)


@contextmanager
def _signals_set(stop: asyncio.Event) -> Iterator[None]:
    """While the story runs, SIGINT/SIGTERM end it (then everything stops cleanly) instead of raising."""
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


def _token(mesh: DemoMesh) -> Path:
    """An admin token for the demo's control plane, in the data dir (mode 0600)."""
    from control_plane.auth import Role, load_signing_key, mint_token

    token = mint_token(
        load_signing_key(mesh.api.data_dir),
        role=Role.ADMIN,
        subject="meshctl-demo",
        now=datetime.now(UTC),
        ttl=TOKEN_TTL,
    )
    path = mesh.data_dir / "token"
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return path


async def _wait_for_enter(stop: asyncio.Event, prompt: str) -> None:
    """Block until a line arrives on stdin (or it closes), or `stop` is set."""
    print(f"{prompt} (Enter to go on, Ctrl-C to stop)", flush=True)
    loop = asyncio.get_running_loop()
    line: asyncio.Future[str] = loop.create_future()
    fd = sys.stdin.fileno()

    def readable() -> None:
        if not line.done():
            line.set_result(sys.stdin.readline())

    loop.add_reader(fd, readable)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        waiters: set[asyncio.Future[Any]] = {line, stopped}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(fd)
        stopped.cancel()


async def _drive(
    mesh: DemoMesh, group: procs.ProcessGroup, args: argparse.Namespace, interactive: bool
) -> int:
    from meshctl.demo import view
    from meshctl.demo.loadgen import seed_users
    from meshctl.demo.mesh import USERS_INSTANCES, wait_routable

    stop = asyncio.Event()
    with _signals_set(stop):
        token_file = _token(mesh)
        await asyncio.gather(*(seed_users(mesh.apps[instance]) for instance, _ in USERS_INSTANCES))
        await asyncio.to_thread(wait_routable, mesh)
        print("\n".join(view.where_to_look(mesh, token_file)), flush=True)
        return await _tell_or_explore(mesh, group, args, interactive, stop, token_file)


async def _tell_or_explore(
    mesh: DemoMesh,
    group: procs.ProcessGroup,
    args: argparse.Namespace,
    interactive: bool,
    stop: asyncio.Event,
    token_file: Path,
) -> int:
    from meshctl.api_client import ControlPlaneClient, ServerError
    from meshctl.demo import view
    from meshctl.demo.loadgen import LoadGenerator
    from meshctl.demo.story import Interrupted, Story

    token = token_file.read_text().strip()
    generator = LoadGenerator(mesh.entry, rate=args.rate)
    display = view.TerminalDisplay(interactive, lambda: generator.stats)
    pause = None
    if args.steps:
        pause = lambda prompt: _wait_for_enter(stop, prompt)  # noqa: E731
    story = Story(
        mesh,
        group,
        ControlPlaneClient(mesh.api.url, token),
        generator,
        display,
        stop,
        step_seconds=args.step_seconds,
        pause=pause,
        meshctl_env={"MESHCTL_SERVER": mesh.api.url, "MESHCTL_TOKEN": token},
    )
    load = asyncio.create_task(generator.run(stop))
    try:
        if args.no_story:
            return await _explore(story, stop)
        return await _tell(story, args, stop, interactive)
    except Interrupted:
        print("meshctl demo: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except ServerError as err:
        print(f"meshctl demo: the control plane refused a step: {err}", file=sys.stderr)
        return 1
    finally:
        story.resume_paused()
        if args.report is not None:
            args.report.write_text(json.dumps({"steps": [r.to_json() for r in story.results]}, indent=1))
        stop.set()
        await load


async def _tell(story: Story, args: argparse.Namespace, stop: asyncio.Event, interactive: bool) -> int:
    from meshctl.demo import view

    results = await story.run()
    print("\n".join(view.summary_lines(results)), flush=True)
    if args.steps:
        await _wait_for_enter(stop, "the story is over; the mesh keeps running")
    return 0 if all(r.passed for r in results) else 1


async def _explore(story: Story, stop: asyncio.Event) -> int:
    """--no-story: all traffic on v1, then the live view until Ctrl-C; the person drives."""
    from meshctl.demo.story import Interrupted

    for line in await story.baseline():
        print(f"  {line}", flush=True)
    print(
        "The mesh is yours: try `meshctl apply -f examples/policies/canary-90-10.yaml` (with the export "
        "above) and watch the split move. Ctrl-C stops everything.",
        flush=True,
    )
    story.step_seconds = math.inf
    try:
        await story.step("-", "exploring", [], _nothing, lambda r: [])
    except Interrupted:
        return 0
    return 0


async def _nothing() -> list[str]:
    return []
