"""`meshctl demo` end to end: real apps, real sidecars, real certificates on loopback."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SUMMARY_LINE = re.compile(r"^\s+(\w+)\s+calls=(\d+) errors=(\d+) ", re.MULTILINE)


def demo(tmp_path: Path, *args: str) -> tuple[list[str], Path, Path]:
    data, pids = tmp_path / "demo", tmp_path / "pids.json"
    argv = [
        sys.executable,
        "-m",
        "meshctl",
        "demo",
        "--non-interactive",
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


def called_services(admin: str) -> set[str]:
    """Services the sidecar has carried calls to, from its /stats."""
    with urllib.request.urlopen(f"http://{admin}/stats", timeout=5) as reply:
        calls = json.loads(reply.read())["calls"].get("outbound", {})
    return {service for service, counts in calls.items() if counts["total"] > 0}


def summary(stdout: str) -> dict[str, tuple[int, int]]:
    tail = stdout[stdout.index("summary (") :]
    return {m[1]: (int(m[2]), int(m[3])) for m in SUMMARY_LINE.finditer(tail)}


def test_demo_runs_clean_and_leaves_nothing_behind(tmp_path: Path) -> None:
    argv, data, pids_file = demo(tmp_path, "--duration", "5")
    done = subprocess.run(argv, cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    counts = summary(done.stdout)
    assert counts["users"][0] > 0 and counts["users"][1] == 0, output
    assert counts["orders"][0] > 0 and counts["orders"][1] == 0, output
    assert "result: PASS: 0 errors" in done.stdout
    mesh_view = done.stdout[done.stdout.index("as counted by the load generator's sidecar") :]
    assert re.search(r"^\s+users\s+total=\d+ errors=0 ", mesh_view, re.MULTILINE), output
    assert re.search(r"^\s+orders\s+total=\d+ errors=0 ", mesh_view, re.MULTILINE), output
    assert "versions=v1 100%" in done.stdout
    assert "grpcurl -plaintext -authority users 127.0.0.1:" in done.stdout
    assert "not cleanly" not in done.stderr  # every app and sidecar exited 0 on SIGTERM
    pids = json.loads(pids_file.read_text())
    assert len(pids) == 5  # users, orders and the sidecars of users, orders and the load generator
    assert not any(str(data) in cmdline(pid) for pid in pids)
    assert leftovers(data) == []


@pytest.mark.skipif(
    shutil.which("grpcurl", path=str(Path(sys.executable).parent)) is None, reason="no grpcurl"
)
def test_sigterm_stops_the_demo_early_and_grpcurl_works_meanwhile(tmp_path: Path) -> None:
    argv, data, pids_file = demo(tmp_path, "--duration", "120")
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not pids_file.exists():  # written once every process is ready
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "demo did not come up"
            time.sleep(0.05)
        loadgen = json.loads((data / "run" / "sidecar-loadgen.ready.json").read_text())
        grpcurl = str(Path(sys.executable).parent / "grpcurl")
        listed = subprocess.run(
            [grpcurl, "-plaintext", "-authority", "users", loadgen["outbound"], "list"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "demo.v1.Users" in listed.stdout, listed.stdout + listed.stderr
        while not {"users", "orders"} <= called_services(loadgen["admin"]):  # load is flowing to both
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "no load reached both services"
            time.sleep(0.05)

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
        assert time.monotonic() - started < 30
        assert proc.returncode == 0, stdout
        assert "summary (stopped early" in stdout
        assert "all demo processes stopped" in stdout
        assert "not cleanly" not in stdout
        assert leftovers(data) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ctrl_c_while_starting_stops_what_was_started(tmp_path: Path) -> None:
    argv, data, _ = demo(tmp_path, "--duration", "120")
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        first = data / "run" / "users.ready.json"
        deadline = time.monotonic() + 60
        while not first.exists():  # the users app is up, its sidecar and the rest are not yet
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "demo did not start its first process"
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
