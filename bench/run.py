"""Run the benchmark: small unary gRPC calls through each path side by side (see bench/README.md).

    .venv/bin/python -m bench.run            # or: python bench/run.py, or: make bench

Starts everything on loopback (the users app, the sidecars, single-process nginx instances), warms
each row up, then measures every row `--reps` times, interleaved, and reports the medians as a
markdown table (printed, and written to bench/results/latest.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshctl import procs
from meshctl.demo.mesh import ensure_stubs_importable

ensure_stubs_importable()  # bench.grpc_check imports the demo.v1 stubs

from bench import grpc_check, h2load, measure, report, topology  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "results" / "latest.md"
STOP_GRACE = 5.0
REDOS_PER_RUN = 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", "-c", type=int, default=4, help="h2load connections (default 4)")
    parser.add_argument(
        "--streams", "-m", type=int, default=10, help="concurrent streams per connection (default 10)"
    )
    parser.add_argument(
        "--seconds", type=float, default=4.0,
        help="about how long each measured run lasts (default 4): its call count is the rate of "
        "the row's second warm-up run times this",
    )  # fmt: skip
    parser.add_argument("--reps", type=int, default=5, help="measured runs per row (default 5)")
    parser.add_argument(
        "--warmup-requests", type=int, default=3000, help="calls in each row's warm-up run (default 3000)"
    )
    parser.add_argument(
        "--noisy-above", type=float, default=0.25,
        help="a measured run during which other processes kept more than this many cores busy is "
        "run again (default 0.25)",
    )  # fmt: skip
    parser.add_argument(
        "--redos",
        type=int,
        default=10,
        help=f"at most this many runs are run again in all, each at most {REDOS_PER_RUN} times (default 10)",
    )
    parser.add_argument(
        "--rows", default="", help="comma-separated row keys to run, e.g. 1,3,5 (default: all)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report file (default {DEFAULT_OUT})")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs) afterwards")
    args = parser.parse_args(argv)
    if min(args.clients, args.streams, args.reps, args.warmup_requests) < 1 or args.seconds <= 0:
        parser.error("--clients, --streams, --reps, --warmup-requests and --seconds must be positive")
    return args


def machine_description() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), Linux {platform.release()}"


def tool_version(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "?"


class Bench:
    """The measured runs of one invocation; a row whose run fails is left out of later rounds."""

    def __init__(
        self, topo: topology.Topology, load: h2load.Load, work_dir: Path, *, noisy_above: float, redos: int
    ) -> None:
        self.topo = topo
        self.load = load
        self.noisy_above = noisy_above
        self.redos_left = redos
        self.body = grpc_check.write_request_body(work_dir / "get-user.bin")
        self.log_file = work_dir / "h2load.log"
        self.samples: list[measure.Sample] = []
        self.broken: dict[str, str] = {}

    def run_rows(self, rows: Sequence[topology.Row], warmup_requests: int, seconds: float, reps: int) -> None:
        """Two warm-up runs per row (the first pays for connections, handshakes and cold code
        paths; the second's rate sizes the measured runs), then `reps` rounds, rotated so no row
        always runs first."""
        print(f"bench: warm-up, 2 x {warmup_requests} calls per row, h2load {self.load}", flush=True)
        per_row: dict[str, int] = {}
        for row in rows:
            warm = self.attempt(row, 0, warmup_requests)
            if warm is not None:
                warm = self.attempt(row, 0, warmup_requests)
            if warm is not None:
                per_row[row.key] = max(500, int(round(warm.req_per_s * seconds, -2)))
        for rep in range(1, reps + 1):
            print(f"bench: round {rep}/{reps}", flush=True)
            for row in [*rows[rep - 1 :], *rows[: rep - 1]]:
                if row.key not in self.broken:
                    self.measured_run(row, rep, per_row[row.key])

    def measured_run(self, row: topology.Row, rep: int, requests: int) -> measure.Sample | None:
        """A measured run; done again (at most REDOS_PER_RUN times, and while the whole run's budget
        lasts) when other work kept the machine busy meanwhile."""
        for _ in range(REDOS_PER_RUN):
            sample = self.attempt(row, rep, requests)
            if sample is None or sample.problems or sample.other_cpu_share <= self.noisy_above:
                return sample
            if self.redos_left <= 0:
                return sample
            self.redos_left -= 1
            sample.discarded = True
            print(f"  row {row.key:<3} rep {rep}: other load {sample.other_cpu_share:.2f} cores, run again",
                  flush=True)  # fmt: skip
        return self.attempt(row, rep, requests)

    def attempt(self, row: topology.Row, rep: int, requests: int) -> measure.Sample | None:
        try:
            sample = measure.run_once(
                self.topo, row, rep=rep, body=self.body, load=self.load, requests=requests,
                log_file=self.log_file,
            )  # fmt: skip
        except (h2load.H2LoadError, grpc_check.PathBroken, OSError) as exc:
            self.broken[row.key] = f"rep {rep}: {exc}"
            print(f"  row {row.key}: FAILED, left out from now on: {exc}", flush=True)
            return None
        self.samples.append(sample)
        kind = "warm-up" if rep == 0 else f"rep {rep}"
        flag = f"  PROBLEMS: {sample.problems}" if sample.problems else ""
        print(
            f"  row {row.key:<3} {kind:<8} {sample.requests:>7} calls {sample.req_per_s:>7.0f} req/s "
            f"p50 {sample.p50_ms:.2f} ms p99 {sample.p99_ms:.2f} ms{flag}",
            flush=True,
        )
        return sample


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [tool for tool in ("h2load", "nginx") if shutil.which(tool) is None]
    if missing:
        print(f"bench: {' and '.join(missing)} not found; run `make tools`", file=sys.stderr)
        return 2
    load = h2load.Load(args.clients, args.streams)
    work_dir = Path(tempfile.mkdtemp(prefix="grpc-mesh-bench-"))
    info = report.RunInfo(
        started=datetime.now(UTC),
        machine=machine_description(),
        software=f"Python {platform.python_version()}; {tool_version(['h2load', '--version'])}; "
        f"{tool_version(['nginx', '-v'])}",
        load=str(load),
        seconds=args.seconds,
        reps=args.reps,
        noisy_above=args.noisy_above,
    )
    ok = False
    try:
        with procs.ProcessGroup(grace=STOP_GRACE, log_dir=work_dir / "logs") as group:
            print(f"bench: starting the processes in {work_dir}", flush=True)
            topo = topology.Launcher(group, work_dir).launch()
            wanted = {k.strip() for k in args.rows.split(",") if k.strip()}
            rows = [row for row in topo.rows if not wanted or row.key in wanted]
            grpc_check.create_user(topo.app_address)
            bench = Bench(topo, load, work_dir, noisy_above=args.noisy_above, redos=args.redos)
            bench.run_rows(rows, args.warmup_requests, args.seconds, args.reps)
        measured = [row for row in rows if row.key not in bench.broken]
        text = report.render(info, rows, measured, bench.samples, bench.broken)
        print("\n" + text)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"bench: report written to {args.out}")
        ok = not bench.broken and not any(s.problems for s in bench.samples)
    except procs.ProcessError as exc:
        print(f"bench: a process did not start: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    finally:
        if ok and not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            print(f"bench: kept {work_dir} (configs in run/ and nginx/, logs in logs/)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
