"""Every command in README.md runs: its ```sh blocks, in order, as one bash script (`set -e`), in a
scratch directory laid out like the checkout (`.venv` linked, `examples/` copied), with real
processes on the walkthrough's fixed ports. The two quick-start commands are covered elsewhere
(`NOT_RUN_HERE` says where).

So a command added to the README must work there: after the commands above it (the walkthrough's
processes are still running, `MESHCTL_SERVER` and `MESHCTL_TOKEN` exported), exit 0, and end by
itself — a process that runs until stopped is started with `&` (this test stops the whole process
group at the end), and one that refreshes forever is given a bound in the README (e.g. `timeout`)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)
# Lines not run by this test, and what runs them instead.
NOT_RUN_HERE = {
    "make demo": "tests/e2e/test_demo.py runs `meshctl demo`, which is all `make demo` does",
    "make test": "is the suite this test is part of",
}
PORTS = (15000, 15001, 15006, 15010, 15011, 15020, 50051)  # the walkthrough's fixed ports
TIMEOUT = 300


def commands(text: str) -> list[str]:
    """The README's shell lines, in order (comments kept: bash drops them)."""
    return [line for block in BLOCK.findall(text) for line in block.splitlines() if line.strip()]


def command_of(line: str) -> str:
    return line.split("#", 1)[0].strip()


def busy_port() -> int | None:
    for port in PORTS:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return port
    return None


def test_the_readme_lists_its_commands_in_sh_blocks() -> None:
    lines = commands(README.read_text())
    skipped = [line for line in lines if command_of(line) in NOT_RUN_HERE]
    assert [command_of(line) for line in skipped] == list(NOT_RUN_HERE)  # the quick start, first
    assert len(lines) > 20


def test_every_readme_command_runs(tmp_path: Path) -> None:
    port = busy_port()
    if port is not None:
        pytest.skip(f"127.0.0.1:{port}, a port the README's walkthrough uses, is taken")
    if not (REPO / ".venv" / "bin" / "grpcurl").exists():
        pytest.skip("no .venv/bin/grpcurl (make venv installs it)")
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    lines = [line for line in commands(README.read_text()) if command_of(line) not in NOT_RUN_HERE]
    script = tmp_path / "readme.sh"
    script.write_text(
        "set -euo pipefail\n"
        "trap 'echo \"README command failed (exit $?): $BASH_COMMAND\" >&2' ERR\n" + "\n".join(lines) + "\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHCTL_")}
    log = tmp_path / "readme.log"
    # Output to a file, not a pipe: the background processes keep what they inherit open after the
    # script ends, and a pipe would stay open with them.
    with log.open("w") as out_file:
        proc = subprocess.Popen(
            ["bash", str(script)],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out_file,
            stderr=subprocess.STDOUT,
            text=True,
            process_group=0,  # the script and everything it starts in the background: one group to stop
        )
    try:
        proc.wait(timeout=TIMEOUT)
    finally:
        stop_group(proc)
    out = log.read_text()
    assert proc.returncode == 0, out
    assert "demo.v1.Users" in out  # grpcurl list through the mesh
    assert '"name": "Ada"' in out and '"name": "Grace"' in out
    assert "2 sidecars, all on revision" in out  # meshctl status
    assert "name: split" in out  # meshctl get vs users -o yaml
    assert 'istio_requests_total{connection_security_policy="none",destination_service="users"' in out
    assert "mesh.v1.PolicyService" in out  # grpcurl against the control plane's API


def stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the script's process group (its background processes drain and exit), then SIGKILL
    whatever is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait()
