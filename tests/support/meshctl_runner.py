"""Run meshctl's control-plane commands in-process, against a FakeControlPlane, on a fake clock."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from meshctl import cmd_policy, cmd_status
from tests.support.fake_control_plane import FakeControlPlane

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)


class FakeClock:
    """A monotonic clock that only moves when meshctl sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def run_meshctl(*argv: str, clock: FakeClock | None = None, now: datetime = NOW) -> int:
    parser = argparse.ArgumentParser(prog="meshctl")
    sub = parser.add_subparsers(dest="command", required=True)
    fake_clock = clock or FakeClock()
    cmd_policy.register(sub, clock=fake_clock, sleep=fake_clock.sleep, now=lambda: now)
    cmd_status.register(sub, now=lambda: now)
    args = parser.parse_args(list(argv))
    code: int = args.run(args)
    return code


def serve_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeControlPlane]:
    """Body of a fixture: a running fake, with MESHCTL_SERVER pointing at it and no token set."""
    with FakeControlPlane() as fake:
        monkeypatch.setenv("MESHCTL_SERVER", fake.url)
        monkeypatch.delenv("MESHCTL_TOKEN", raising=False)
        yield fake
