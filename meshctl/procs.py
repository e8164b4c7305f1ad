"""A small process supervisor: start children in their own process groups, wait for
their ready files, and stop them all (reverse start order) on exit, error or signal.

Used by `meshctl demo`, the integration tests and the benchmarks. A child announces
readiness by writing a JSON object to its ready file; nothing here sleeps for a fixed
time to guess that a child is up.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

POLL_INTERVAL = 0.02
LOG_TAIL_LINES = 30


class ProcessError(RuntimeError):
    """A managed child did not become ready; the message carries the tail of its log."""


class ProcessExitedError(ProcessError):
    """The child exited before writing its ready file."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


class ReadyTimeoutError(ProcessError):
    """The child was still running but not ready when the deadline passed."""


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def read_ready_file(path: Path) -> dict[str, Any] | None:
    """The ready file's JSON object, or None while it is missing or half-written."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class ManagedProcess:
    """One child process, in a process group of its own, logging to `log_path`."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], ready_file: Path, log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.ready_file = ready_file
        self.log_path = log_path
        self.ready: dict[str, Any] | None = None

    def __repr__(self) -> str:
        state = "exited" if self.has_exited() else "running"
        return f"ManagedProcess(name={self.name!r}, pid={self.pid}, {state})"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def has_exited(self) -> bool:
        """True once the child has exited. Does not reap it: while the leader is an
        unreaped zombie its pid, and so its process group id, cannot be reused, which
        keeps the final killpg in stop() from ever hitting an unrelated group."""
        if self.popen.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Poll until the ready file holds a JSON object and return it.

        Raises ProcessExitedError if the child exits first, ReadyTimeoutError at the deadline.
        """
        deadline = time.monotonic() + timeout
        while True:
            data = read_ready_file(self.ready_file)
            if data is not None:
                self.ready = data
                return data
            if self.has_exited():
                code = self.popen.wait()
                raise ProcessExitedError(
                    f"{self.name} (pid {self.pid}) exited with code {code} before it was ready; "
                    f"last lines of {self.log_path}:\n{log_tail(self.log_path)}",
                    code,
                )
            if time.monotonic() >= deadline:
                raise ReadyTimeoutError(
                    f"{self.name} (pid {self.pid}) was not ready after {timeout:.1f}s "
                    f"(no JSON in {self.ready_file}); last lines of {self.log_path}:\n"
                    f"{log_tail(self.log_path)}"
                )
            time.sleep(POLL_INTERVAL)

    def stop(self, grace: float = 5.0) -> int:
        """SIGTERM the group, wait up to `grace` seconds for the child, then SIGKILL the
        group (which also ends anything the child left behind in it) and reap the child.

        Returns the child's exit code (negative: killed by that signal).
        """
        if not self.has_exited():
            _signal_group(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while not self.has_exited() and time.monotonic() < deadline:
                time.sleep(POLL_INTERVAL)
        if self.popen.returncode is None:  # not reaped yet, so the group id is still ours
            _signal_group(self.pid, signal.SIGKILL)
        return self.popen.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def start(
    name: str,
    argv: Sequence[str],
    ready_file: Path | str,
    *,
    env: Mapping[str, str] | None = None,
    log_dir: Path | str | None = None,
    cwd: Path | str | None = None,
) -> ManagedProcess:
    """Launch `argv` in its own process group with stdout+stderr in `<log_dir>/<name>.log`.

    `env` is laid over this process's environment. `log_dir` defaults to the ready
    file's folder. A stale ready file is removed first, so wait_ready never sees it.
    """
    ready = Path(ready_file)
    logs = Path(log_dir) if log_dir is not None else ready.parent
    logs.mkdir(parents=True, exist_ok=True)
    ready.parent.mkdir(parents=True, exist_ok=True)
    ready.unlink(missing_ok=True)
    log_path = logs / f"{name}.log"
    child_env = dict(os.environ)
    if env:
        child_env.update(env)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
            cwd=cwd,
            process_group=0,
        )
    return ManagedProcess(name, popen, ready, log_path)


def python_argv(*args: str) -> list[str]:
    """argv running this interpreter, e.g. python_argv("-m", "services.users", ...)."""
    return [sys.executable, *args]


class ProcessGroup:
    """Owns the processes it starts and stops them in reverse start order when the
    `with` block ends, whatever the reason: normal exit, exception, Ctrl-C or SIGTERM.

    While the block runs (on the main thread), SIGTERM raises KeyboardInterrupt like
    SIGINT does, so both take the same clean-up path. A signal arriving while a child
    is being spawned is held until the child is registered, so none escapes.
    """

    _HANDLED = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, *, grace: float = 5.0, log_dir: Path | str | None = None) -> None:
        self.grace = grace
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.processes: list[ManagedProcess] = []
        self.exit_codes: dict[str, int] = {}  # of every child stopped so far, by name
        self._previous: dict[int, Any] = {}
        self._spawning = False
        self._pending_signal = False

    def __enter__(self) -> ProcessGroup:
        if threading.current_thread() is threading.main_thread():
            for sig in self._HANDLED:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Ignore further signals while tearing down: every stop is bounded by its grace.
        for sig in self._previous:
            signal.signal(sig, signal.SIG_IGN)
        try:
            self.stop_all()
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._spawning:
            self._pending_signal = True
            return
        raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

    def start(
        self,
        name: str,
        argv: Sequence[str],
        ready_file: Path | str,
        *,
        env: Mapping[str, str] | None = None,
        log_dir: Path | str | None = None,
        cwd: Path | str | None = None,
    ) -> ManagedProcess:
        self._spawning = True
        try:
            proc = start(name, argv, ready_file, env=env, log_dir=log_dir or self.log_dir, cwd=cwd)
            self.processes.append(proc)
        finally:
            self._spawning = False
        if self._pending_signal:
            self._pending_signal = False
            raise KeyboardInterrupt("received a signal while starting " + name)
        return proc

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def stop(self, proc: ManagedProcess) -> int:
        """Stop one child now and forget it; returns its exit code."""
        self.processes.remove(proc)
        self.exit_codes[proc.name] = proc.stop(self.grace)
        return self.exit_codes[proc.name]

    def stop_all(self) -> dict[str, int]:
        """Stop every child, last started first; returns each one's exit code by name."""
        codes: dict[str, int] = {}
        while self.processes:
            proc = self.processes[-1]
            codes[proc.name] = self.stop(proc)
        return codes
