"""PeerAuthentication: which policy governs the workload, and the inbound listener that admits
mutual TLS always and plaintext only when the mode in force allows it."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from control_plane.ca import CertificateAuthority, SpiffeId, WorkloadFiles, issue_workload_files
from sidecar import tls
from sidecar.config import Policy
from sidecar.listener import InboundListener
from sidecar.peer_authentication import DEFAULT_PEER_AUTHN, PeerAuthn, compile_peer_authentication
from sidecar.stats import Stats
from sidecar.traffic import PolicyRejected


def pa(namespace: str, name: str, mode: str, selector: dict[str, Any] | None = None) -> Policy:
    spec: dict[str, Any] = {"mtls": {"mode": mode}}
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    return Policy("PeerAuthentication", namespace, name, spec)


def test_no_policy_is_strict() -> None:
    assert compile_peer_authentication([]) == DEFAULT_PEER_AUTHN
    assert DEFAULT_PEER_AUTHN.mode == "STRICT" and not DEFAULT_PEER_AUTHN.plaintext_allowed


def test_the_most_specific_policy_wins() -> None:
    mesh = pa("mesh-system", "mesh", "PERMISSIVE")
    mesh_selected = pa("mesh-system", "mesh-users", "STRICT", {"app": "users"})
    namespace = pa("default", "ns", "PERMISSIVE")
    workload = pa("default", "users", "STRICT", {"app": "users"})
    assert compile_peer_authentication([mesh]) == PeerAuthn("PERMISSIVE", "mesh-system/mesh")
    assert compile_peer_authentication([mesh, mesh_selected]).policy == "mesh-system/mesh-users"
    assert compile_peer_authentication([mesh_selected, namespace, mesh]) == PeerAuthn(
        "PERMISSIVE", "default/ns"
    )
    assert compile_peer_authentication([namespace, workload, mesh]) == PeerAuthn("STRICT", "default/users")


def test_same_rank_first_by_name() -> None:
    policies = [pa("default", "b", "STRICT"), pa("default", "a", "PERMISSIVE")]
    assert compile_peer_authentication(policies) == PeerAuthn("PERMISSIVE", "default/a")


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({}, "policies[1].spec.mtls"),
        ({"mtls": {"mode": "DISABLE"}}, "policies[1].spec.mtls.mode"),
        ({"mtls": {"mode": 1}}, "policies[1].spec.mtls.mode"),
        ({"mtls": "STRICT"}, "policies[1].spec.mtls"),
    ],
)
def test_a_mode_the_sidecar_cannot_enforce_is_rejected(spec: dict[str, Any], path: str) -> None:
    # Even when another policy would win: the bad one is refused whichever wins.
    bad = Policy("PeerAuthentication", "default", "bad", spec)
    policies = [pa("default", "winner", "STRICT", {"app": "x"}), bad]
    with pytest.raises(PolicyRejected) as rejected:
        compile_peer_authentication(policies)
    assert rejected.value.path == path


# ---------------------------------------------------------------------------- the listener


class Greeter(asyncio.Protocol):
    """Answers every connection with b"hi" (TLS or not), and says which it was."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        secure = transport.get_extra_info("ssl_object") is not None
        transport.write(b"hi-tls" if secure else b"hi-plain")  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, WorkloadFiles]:
    root = tmp_path_factory.mktemp("certs")
    now = datetime.now(UTC)
    mesh = CertificateAuthority.create("cluster.local", now=now)
    other = CertificateAuthority.create("cluster.local", now=now)

    def issue(ca: CertificateAuthority, service: str, out: str) -> WorkloadFiles:
        return issue_workload_files(ca, SpiffeId("cluster.local", "default", service), root / out, now=now)

    return {
        "server": issue(mesh, "server", "s"),
        "client": issue(mesh, "client", "c"),
        "foreign": issue(other, "client", "f"),
    }


def client_context(trust: Path, cert: WorkloadFiles) -> ssl.SSLContext:
    return tls.client_context(cert.cert, cert.key, trust)


async def greeting(port: int, ssl_context: ssl.SSLContext | None, send: bytes = b"") -> bytes:
    """What the listener says to a client (b"" when it closes the connection, or the TLS
    handshake fails)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl_context)
    except (ssl.SSLError, ConnectionError):
        return b""
    try:
        if send:
            writer.write(send)
        return await reader.read(100)
    except (ssl.SSLError, ConnectionError):
        return b""
    finally:
        writer.close()


def run(scenario: Callable[..., Any], *args: Any) -> None:
    asyncio.run(asyncio.wait_for(scenario(*args), 30))


def test_listener_admits_tls_always_and_plaintext_only_when_allowed(certs: dict[str, WorkloadFiles]) -> None:
    server = certs["server"]
    mode = {"permissive": False}
    stats = Stats()

    async def scenario() -> None:
        listener = InboundListener(
            Greeter,
            lambda: tls.server_context(server.cert, server.key, server.ca),
            lambda: mode["permissive"],
            stats,
        )
        await listener.start("127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        mesh_client = client_context(server.ca, certs["client"])
        foreign_client = client_context(server.ca, certs["foreign"])
        try:
            assert await greeting(port, mesh_client) == b"hi-tls"
            assert await greeting(port, None, b"PRI * HTTP/2.0\r\n") == b""  # STRICT
            assert await greeting(port, foreign_client) == b""
            mode["permissive"] = True  # the next connection sees the new mode
            assert await greeting(port, None, b"PRI * HTTP/2.0\r\n") == b"hi-plain"
            assert await greeting(port, mesh_client) == b"hi-tls"
            assert await greeting(port, foreign_client) == b""
        finally:
            listener.close()
            await listener.wait_closed()

    run(scenario)
    assert stats.counters["inbound.plaintext_refused"] == 1
    assert stats.counters["inbound.tls_refused"] == 2


def test_listener_closes_a_connection_that_says_nothing(certs: dict[str, WorkloadFiles]) -> None:
    server = certs["server"]
    stats = Stats()

    async def scenario() -> None:
        listener = InboundListener(
            Greeter,
            lambda: tls.server_context(server.cert, server.key, server.ca),
            lambda: True,
            stats,
            first_bytes_timeout=0.05,
        )
        await listener.start("127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        try:
            assert await greeting(port, None) == b""  # sends nothing: closed after the timeout
        finally:
            listener.close()
            await listener.wait_closed()

    run(scenario)
    assert stats.counters["inbound.first_bytes_timeout"] == 1
