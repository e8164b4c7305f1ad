"""meshctl.procs: ready files, early exits with log tails, group stops and signal clean-up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from meshctl import procs

# Written into each child: an atomic ready-file writer, as the real services do it.
PRELUDE = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time
    def ready(path, **extra):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), **extra}, f)
        os.replace(tmp, path)
    """
)


def child(body: str, *args: str) -> list[str]:
    return procs.python_argv("-c", PRELUDE + textwrap.dedent(body), *args)


def alive(pid: int) -> bool:
    """Running and not a zombie (a killed grandchild may wait a while to be reaped by init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_wait_ready_returns_the_ready_json_and_logs_output(tmp_path: Path) -> None:
    ready = tmp_path / "app.json"
    proc = procs.start(
        "app",
        child(
            """
            print("starting up", flush=True)
            ready(sys.argv[1], address="127.0.0.1:1234")
            signal.pause()
            """,
            str(ready),
        ),
        ready,
    )
    try:
        info = proc.wait_ready(timeout=10)
        assert info == {"pid": proc.pid, "address": "127.0.0.1:1234"}
        assert proc.ready == info
        assert "starting up" in (tmp_path / "app.log").read_text()
        assert not proc.has_exited()
    finally:
        assert proc.stop(grace=5) == -signal.SIGTERM


def test_stale_ready_file_is_removed_before_start(tmp_path: Path) -> None:
    ready = tmp_path / "app.json"
    ready.write_text(json.dumps({"pid": 1}))
    proc = procs.start("app", child("import sys; sys.exit(0)"), ready)
    with pytest.raises(procs.ProcessExitedError):
        proc.wait_ready(timeout=10)


def test_early_exit_raises_with_exit_code_and_log_tail(tmp_path: Path) -> None:
    ready = tmp_path / "r.json"
    body = """
        for i in range(100):
            print("line", i)
        print("fatal: cannot bind 127.0.0.1:1", file=sys.stderr)
        sys.exit(3)
    """
    proc = procs.start("broken", child(body), ready, log_dir=tmp_path / "logs")
    with pytest.raises(procs.ProcessExitedError) as err:
        proc.wait_ready(timeout=10)
    message = str(err.value)
    assert "broken" in message and "exited with code 3" in message
    assert err.value.returncode == 3
    assert "fatal: cannot bind 127.0.0.1:1" in message
    assert "line 99" in message and "line 10\n" not in message  # only the tail
    assert str(tmp_path / "logs" / "broken.log") in message
    assert proc.stop(grace=1) == 3


def test_not_ready_by_the_deadline_raises_timeout(tmp_path: Path) -> None:
    proc = procs.start("slow", child("print('still thinking', flush=True); signal.pause()"), tmp_path / "r")
    try:
        started = time.monotonic()
        with pytest.raises(procs.ReadyTimeoutError, match="still thinking"):
            proc.wait_ready(timeout=0.5)
        assert time.monotonic() - started < 5
    finally:
        proc.stop(grace=1)


def test_stop_kills_the_whole_group_when_sigterm_is_ignored(tmp_path: Path) -> None:
    ready = tmp_path / "r.json"
    body = """
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        grandchild = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
        ready(sys.argv[1], grandchild=grandchild.pid)
        while True:
            signal.pause()
    """
    proc = procs.start("stubborn", child(body, str(ready)), ready)
    grandchild = proc.wait_ready(timeout=10)["grandchild"]
    assert alive(grandchild)
    started = time.monotonic()
    assert proc.stop(grace=0.3) == -signal.SIGKILL
    assert time.monotonic() - started < 5
    assert wait_gone(grandchild)
    assert not alive(proc.pid)


def test_group_stops_in_reverse_start_order_even_on_error_and_one_can_go_early(tmp_path: Path) -> None:
    order = tmp_path / "order.txt"
    body = """
        def on_term(*_):
            with open(sys.argv[2], "a") as f:
                f.write(sys.argv[3] + "\\n")
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        ready(sys.argv[1])
        while True:
            signal.pause()
    """
    pids = []
    with pytest.raises(RuntimeError, match="test failure"), procs.ProcessGroup(grace=5) as group:
        for name in ("first", "second", "third"):
            r = tmp_path / f"{name}.json"
            group.start(name, child(body, str(r), str(order), name), r).wait_ready(timeout=10)
        pids = group.pids
        assert group.stop(group.processes[1]) == 0  # one stopped early is forgotten by the group
        assert [p.name for p in group.processes] == ["first", "third"]
        raise RuntimeError("test failure")
    assert order.read_text().split() == ["second", "third", "first"]
    assert all(not alive(pid) for pid in pids)
    assert group.processes == []
    assert group.exit_codes == {"second": 0, "third": 0, "first": 0}


def test_sigterm_to_the_supervisor_stops_its_children(tmp_path: Path) -> None:
    """A supervisor using ProcessGroup cleans up when it gets SIGTERM (not only Ctrl-C)."""
    supervisor_ready = tmp_path / "supervisor.json"
    script = textwrap.dedent(
        f"""
        import json, os, signal, sys
        from meshctl import procs
        argv = procs.python_argv("-c", {PRELUDE + "ready(sys.argv[1]); signal.pause()"!r})
        with procs.ProcessGroup(grace=5) as group:
            for name in ("a", "b"):
                r = {str(tmp_path)!r} + "/" + name + ".json"
                group.start(name, [*argv, r], r).wait_ready(timeout=10)
            with open({str(supervisor_ready)!r}, "w") as f:
                json.dump({{"pid": os.getpid(), "children": group.pids}}, f)
            signal.pause()
        """
    )
    root = Path(procs.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    sup = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        info = None
        while info is None and sup.poll() is None and time.monotonic() < deadline:
            info = procs.read_ready_file(supervisor_ready)
            time.sleep(0.01)
        assert info is not None, "supervisor never became ready"
        children = info["children"]
        assert len(children) == 2 and all(alive(pid) for pid in children)
        sup.send_signal(signal.SIGTERM)
        _, stderr = sup.communicate(timeout=15)
        assert sup.returncode != 0
        assert b"KeyboardInterrupt" in stderr
        assert all(wait_gone(pid) for pid in children)
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
