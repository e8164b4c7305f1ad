"""Sidecar.apply: a pushed snapshot swaps the chains atomically; identical content keeps them, and
pools of endpoints no snapshot names any more are retired."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from control_plane.ca import CertificateAuthority, issue_workload_files
from control_plane.spiffe import SpiffeId
from sidecar.app import Sidecar
from sidecar.call import CallHead
from sidecar.config import Address, Endpoint, ServiceEntry, parse_config
from sidecar.discovery import Discovered


def _sidecar(tmp_path: Path) -> Sidecar:
    ca = CertificateAuthority.create("cluster.local", now=datetime.now(UTC))
    files = issue_workload_files(ca, SpiffeId("cluster.local", "default", "client"), tmp_path)
    config = parse_config(
        {
            "service": "client",
            "listeners": {"outbound": "127.0.0.1:0"},
            "control_plane": "127.0.0.1:15010",
            "tls": {"cert": str(files.cert), "key": str(files.key), "ca": str(files.ca)},
        }
    )
    return Sidecar(config, node_id="client-1")


def _users(*ports: int) -> dict[str, ServiceEntry]:
    endpoints = tuple(Endpoint(Address("127.0.0.1", port)) for port in ports)
    return {"users": ServiceEntry("users", ("demo.v1.Users",), endpoints)}


def _pick(sidecar: Sidecar) -> Address:
    handler = sidecar.snapshot.outbound
    assert handler is not None
    head = CallHead("/demo.v1.Users/GetUser", "users", (), None, None)
    return handler(head).pool.address


def test_identical_content_at_a_newer_revision_keeps_the_chains(tmp_path: Path) -> None:
    async def scenario() -> None:
        sidecar = _sidecar(tmp_path)
        sidecar.apply(Discovered("3-aaa", 3, _users(7001, 7002), ()))
        first = sidecar.snapshot.outbound
        assert _pick(sidecar).port == 7001
        sidecar.apply(Discovered("4-aaa", 4, _users(7001, 7002), ()))
        assert sidecar.snapshot.outbound is first  # round robin carries on where it was
        assert (sidecar.snapshot.version, sidecar.snapshot.store_revision) == ("4-aaa", 4)
        assert _pick(sidecar).port == 7002
        await sidecar.pools.close()

    asyncio.run(scenario())


def test_new_endpoints_swap_the_chain_and_retire_pools_no_one_names(tmp_path: Path) -> None:
    async def scenario() -> None:
        sidecar = _sidecar(tmp_path)
        sidecar.apply(Discovered("3-aaa", 3, _users(7001, 7002), ()))
        before = sidecar.snapshot.outbound
        sidecar.apply(Discovered("5-bbb", 5, _users(7002, 7003), ()))
        assert sidecar.snapshot.outbound is not before
        assert {p.address.port for p in sidecar.pools.all()} == {7002, 7003}
        assert {_pick(sidecar).port for _ in range(4)} == {7002, 7003}
        await sidecar.pools.close()

    asyncio.run(scenario())
