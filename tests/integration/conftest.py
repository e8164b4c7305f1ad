"""Fixtures for the data-path tests: a mesh of real processes on loopback (see tests.support.mesh)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.mesh import AppSpec, Mesh, running_mesh, warm_up

# Well above the 16 MiB messages the tests send, low enough that going over it stays cheap.
MAX_MESSAGE_BYTES = 20 << 20


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """One client sidecar in front of two workloads: the echo server ("echo") and the example
    users service ("users"), each behind its own sidecar. Shared by the tests of a module, which
    must leave every process running."""
    apps = [AppSpec("echo", "echo"), AppSpec("users", "users")]
    with running_mesh(
        tmp_path_factory.mktemp("mesh"), apps, max_message_bytes=MAX_MESSAGE_BYTES, drain_seconds=2.0
    ) as running:
        # Open the sidecars' upstream connections with a small call first, so which test runs
        # first does not matter. The first call over a new mesh has a test of its own
        # (test_mesh_fresh.py).
        warm_up(running, "echo")
        yield running
