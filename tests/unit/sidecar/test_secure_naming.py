"""Secure naming: the outbound pool accepts an upstream only if its certificate names the SPIFFE
ID the snapshot expects for that endpoint (a real TLS handshake on loopback)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from control_plane.ca import CertificateAuthority, issue_workload_files
from control_plane.spiffe import SpiffeId
from sidecar import tls
from sidecar.config import Address
from sidecar.h2.stream import Limits
from sidecar.pool import Pools

USERS = SpiffeId("cluster.local", "default", "users")
CLIENT = SpiffeId("cluster.local", "default", "client")


def test_the_peer_must_be_the_expected_workload(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    ca = CertificateAuthority.create("cluster.local", now=now)
    server_files = issue_workload_files(ca, USERS, tmp_path, now=now)
    client_files = issue_workload_files(ca, CLIENT, tmp_path, now=now)

    async def main() -> None:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # until the client goes away
            writer.close()

        server_ctx = tls.server_context(server_files.cert, server_files.key, server_files.ca)
        server = await asyncio.start_server(hold, "127.0.0.1", 0, ssl=server_ctx)
        address = Address("127.0.0.1", server.sockets[0].getsockname()[1])
        client_ctx = tls.client_context(client_files.cert, client_files.key, client_files.ca)
        try:
            pools = Pools(Limits(), client_ctx)
            impostor = pools.get(
                address, secure=True, identity=str(SpiffeId("cluster.local", "default", "orders"))
            )
            await impostor._connect()
            assert impostor.connections == [] and impostor.identity_mismatches == 1
            # The snapshot now names the workload that is really there: new connections pass.
            same = pools.get(address, secure=True, identity=str(USERS))
            assert same is impostor and same.expected_identity == str(USERS)
            await same._connect()
            assert len(same.connections) == 1 and same.connections[0].peer_identity == str(USERS)
            # No identity known (static mode): any certificate from the mesh CA.
            anyone = Pools(Limits(), client_ctx).get(address, secure=True)
            await anyone._connect()
            assert len(anyone.connections) == 1
            await pools.close()
            await anyone.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())
