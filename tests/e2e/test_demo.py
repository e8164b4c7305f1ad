"""`meshctl demo` end to end: a real control plane, apps and sidecars on loopback; each story step's
effect asserted from the measurements the demo reports (the calling sidecars' /metrics)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def demo(tmp_path: Path, *args: str) -> tuple[list[str], Path, Path]:
    data, pids = tmp_path / "demo", tmp_path / "pids.json"
    argv = [
        sys.executable,
        "-m",
        "meshctl",
        "demo",
        "--non-interactive",
        "--any-ports",
        "--dir",
        str(data),
        "--pids-file",
        str(pids),
    ]
    return [*argv, *args], data, pids


def env() -> dict[str, str]:
    paths = [str(REPO), str(REPO / "gen"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def leftovers(data: Path) -> list[str]:
    """Live processes whose command line mentions the demo's data dir (every child's does)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            line = cmdline(int(entry.name))
            if str(data) in line and "meshctl demo" not in line:
                found.append(f"{entry.name}: {line}")
    return found


def run_ready(data: Path, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((data / "run" / f"{name}.ready.json").read_text())
    return loaded


def share(rows: list[dict[str, Any]], service: str, version: str) -> tuple[float, int]:
    calls = {r["version"]: r["calls"] for r in rows if r["service"] == service}
    total = sum(calls.values())
    return calls.get(version, 0) / total, total


def success(rows: list[dict[str, Any]], service: str) -> float:
    selected = [r for r in rows if r["service"] == service]
    return sum(r["success"] * r["calls"] for r in selected) / sum(r["calls"] for r in selected)


def within(measured: float, expected: float, calls: int) -> bool:
    """Four binomial standard deviations (at least 3 points): a correct split fails 1 run in 15,000."""
    return abs(measured - expected) <= max(0.03, 4 * math.sqrt(expected * (1 - expected) / calls))


def port_is_free(address: str) -> bool:
    """Nothing listens there: a server can bind it again (with SO_REUSEADDR, as servers do, since
    connections the demo closed may linger in TIME_WAIT)."""
    host, _, port = address.rpartition(":")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, int(port)))
        except OSError:
            return False
    return True


def test_the_canary_story_end_to_end_from_the_sidecars_metrics(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    argv, data, pids_file = demo(tmp_path, "--step-seconds", "3", "--rate", "100", "--report", str(report))
    done = subprocess.run(argv, cwd=REPO, env=env(), capture_output=True, text=True, timeout=240)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    steps = {s["step"]: s for s in json.loads(report.read_text())["steps"]}
    assert list(steps) == ["1", "2", "3", "4", "5a", "5b", "5c", "5d"], output

    v2, n = share(steps["1"]["rows"], "users", "v2")
    assert v2 == 0.0 and n > 100, output  # weight 0 sends nothing
    assert success(steps["1"]["rows"], "orders") >= 0.99, output
    v2, n = share(steps["2"]["rows"], "users", "v2")
    assert within(v2, 0.10, n), (v2, n)
    canary = steps["3"]["client"]["users x-canary"]
    assert canary["calls"] > 0 and canary["versions"] == {"v2": canary["calls"]}, canary
    # The hang is inside the fault step's measurement: retries keep success up all through it,
    # and outlier detection ejects the hung instance (counted by the calling sidecars).
    assert success(steps["4"]["rows"], "users") >= 0.99, steps["4"]
    assert steps["4"]["client"]["users"]["errors"] == 0, steps["4"]
    counters = steps["4"]["counters"]
    assert counters.get("grpc_mesh_retries{outbound}", 0) > 0, counters
    assert counters.get("grpc_mesh_outlier_ejections", 0) > 0, counters
    v2, n = share(steps["5a"]["rows"], "users", "v2")
    assert within(v2, 0.5, n), (v2, n)
    assert share(steps["5b"]["rows"], "users", "v2")[0] == 1.0
    v2, n = share(steps["5c"]["rows"], "users", "v2")
    assert within(v2, 0.5, n), (v2, n)  # the rollback restored 50/50
    for step in steps.values():
        assert all(check["ok"] for check in step["checks"]), step
        if step["rows"]:
            assert success(step["rows"], "users") >= 0.99, step
    assert "5 sidecars, all on revision" in done.stdout  # meshctl status, as printed
    assert "grpcurl -plaintext -authority users 127.0.0.1:" in done.stdout
    assert "/config_dump" in done.stdout and "/metrics" in done.stdout
    assert "result: PASS" in done.stdout
    assert "not cleanly" not in done.stderr  # every process exited 0 on SIGTERM (the hung app resumed)
    pids = json.loads(pids_file.read_text())
    assert len(pids) == 10  # control plane, 3 users apps, orders and the sidecars of all five and the load
    assert not any(str(data) in cmdline(pid) for pid in pids)
    assert leftovers(data) == []
    for name in ("control-plane", "sidecar-loadgen", "sidecar-users-v2-a"):
        ready = run_ready(data, name)
        for key in ("grpc", "http", "outbound", "inbound", "admin"):
            if key in ready:
                assert port_is_free(ready[key]), (name, key, ready[key])


@pytest.mark.skipif(
    shutil.which("grpcurl", path=str(Path(sys.executable).parent)) is None, reason="no grpcurl"
)
def test_sigterm_mid_story_stops_everything_and_grpcurl_works_meanwhile(tmp_path: Path) -> None:
    argv, data, pids_file = demo(tmp_path, "--step-seconds", "120")
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not pids_file.exists():  # written once every process is ready
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "demo did not come up"
            time.sleep(0.05)
        entry = run_ready(data, "sidecar-loadgen")["outbound"]
        grpcurl = str(Path(sys.executable).parent / "grpcurl")
        listed = subprocess.run(
            [grpcurl, "-plaintext", "-authority", "users", entry, "list"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "demo.v1.Users" in listed.stdout, listed.stdout + listed.stderr

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
        assert time.monotonic() - started < 30
        assert proc.returncode == 130, stdout
        assert "meshctl demo: interrupted" in stdout
        assert "all demo processes stopped" in stdout
        assert "not cleanly" not in stdout
        assert leftovers(data) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ctrl_c_while_starting_stops_what_was_started(tmp_path: Path) -> None:
    argv, data, _ = demo(tmp_path, "--step-seconds", "120")
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        first = data / "run" / "users-v1-a.ready.json"
        deadline = time.monotonic() + 60
        while not first.exists():  # the control plane and one app are up, the rest are not yet
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "demo did not start its first app"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
        assert proc.returncode == 130, stdout
        assert "interrupted while starting" in stdout
        assert leftovers(data) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_port_in_use_is_a_clear_error_and_nothing_starts(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    argv = [sys.executable, "-m", "meshctl", "demo", "--non-interactive", "--dir", str(data)]
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):  # already taken by something else: the same error
            sock.bind(("127.0.0.1", 15010))
            sock.listen()
        done = subprocess.run(argv, cwd=REPO, env=env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "meshctl demo: 127.0.0.1:15010 (the control plane's gRPC API) is in use" in done.stderr
    assert "--any-ports" in done.stderr
    assert not (data / "run").exists()
    assert leftovers(data) == []
