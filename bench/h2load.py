"""Run h2load against one address and read what it reports: its summary and its per-request log.

h2load counts an HTTP 200 as a success whatever grpc-status says, so the gRPC outcome is checked
elsewhere (bench.grpc_check, the sidecars' /stats and nginx's non-OK log).
"""

from __future__ import annotations

import math
import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


class H2LoadError(RuntimeError):
    """h2load failed, stalled, or printed something we could not read; the message has the command."""


@dataclass(frozen=True, slots=True)
class Load:
    clients: int  # -c: connections
    streams: int  # -m: concurrent streams per connection

    def __str__(self) -> str:
        return f"-c {self.clients} -m {self.streams}"


@dataclass(frozen=True, slots=True)
class Summary:
    """The lines of h2load's report that matter here."""

    seconds: float
    req_per_s: float
    total: int
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    status_other: int  # 3xx + 4xx + 5xx


@dataclass(frozen=True, slots=True)
class Result:
    command: str
    summary: Summary
    latencies_us: list[int]  # of the requests that completed, ascending

    def percentile_ms(self, q: float) -> float:
        return percentile(self.latencies_us, q) / 1000.0


_FINISHED = re.compile(r"^finished in ([\d.]+)(ms|s|us), ([\d.]+) req/s", re.M)
_REQUESTS = re.compile(
    r"^requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, "
    r"(\d+) timeout",
    re.M,
)
_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M)
_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def parse_summary(text: str) -> Summary:
    finished, requests, status = _FINISHED.search(text), _REQUESTS.search(text), _STATUS.search(text)
    if finished is None or requests is None or status is None:
        raise ValueError("h2load's report lacks the finished/requests/status codes lines")
    total, done, succeeded, failed, errored, timeout = (int(g) for g in requests.groups())
    s2, s3, s4, s5 = (int(g) for g in status.groups())
    return Summary(
        seconds=float(finished.group(1)) * _UNIT[finished.group(2)],
        req_per_s=float(finished.group(3)),
        total=total,
        done=done,
        succeeded=succeeded,
        failed=failed,
        errored=errored,
        timeout=timeout,
        status_2xx=s2,
        status_other=s3 + s4 + s5,
    )


def parse_log(text: str) -> list[int]:
    """Durations (µs) of the completed requests in an h2load --log-file, ascending.

    Each line is: start time (µs since the epoch), HTTP status (-1 for a failed stream), duration (µs).
    """
    durations = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1] != "-1":
            durations.append(int(parts[2]))
    durations.sort()
    return durations


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank q-th percentile (0 < q <= 100) of an ascending list; 0 when empty."""
    if not sorted_values:
        return 0.0
    rank = min(max(1, math.ceil(q / 100 * len(sorted_values))), len(sorted_values))
    return float(sorted_values[rank - 1])


def command(
    url: str, body: Path, load: Load, requests: int, log_file: Path, headers: Sequence[str] = ()
) -> list[str]:
    argv = ["h2load", "-t", "1", "-c", str(load.clients), "-m", str(load.streams), "-n", str(requests)]
    argv += ["-d", str(body), "--log-file", str(log_file)]
    for header in (*GRPC_HEADERS, *headers):
        argv += ["-H", header]
    return [*argv, url]


def run(
    url: str,
    body: Path,
    load: Load,
    requests: int,
    log_file: Path,
    *,
    timeout: float,
    headers: Sequence[str] = (),
) -> Result:
    """One h2load run of `requests` calls (`headers`: extra "name: value" request headers); raises
    H2LoadError when it stalls or fails outright."""
    argv = command(url, body, load, requests, log_file, headers)
    shown = shlex.join(argv)
    log_file.unlink(missing_ok=True)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise H2LoadError(f"h2load did not finish in {timeout:.0f}s: {shown}\n{out[-2000:]}") from None
    if done.returncode != 0:
        output = done.stdout[-2000:] + done.stderr[-2000:]
        raise H2LoadError(f"h2load exited {done.returncode}: {shown}\n{output}")
    try:
        summary = parse_summary(done.stdout)
    except ValueError as exc:
        raise H2LoadError(f"{exc}: {shown}\n{done.stdout[-2000:]}") from None
    latencies = parse_log(log_file.read_text()) if log_file.exists() else []
    return Result(shown, summary, latencies)
