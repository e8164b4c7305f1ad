"""Discovery authentication on a control plane started in-process: a Hello proves its identity
with a certificate from the CA, or is refused (required) or registered unverified (optional)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from mesh.v1 import discovery_pb2, discovery_pb2_grpc

from control_plane.ca import CertificateAuthority
from control_plane.pki import generate_private_key
from sidecar.ca_client import Issued, fetch_certificate
from sidecar.identity import identity_proof
from tests.unit.control_plane.test_ca_service import CA, ORDERS, USERS, build_csr, running_ca

Request = discovery_pb2.StreamSnapshotsRequest


def hello(node_id: str = "users-1", service: str = "users", **fields: Any) -> discovery_pb2.Hello:
    return discovery_pb2.Hello(node_id=node_id, service=service, namespace="default", **fields)


async def one_stream(ca: CA, first: discovery_pb2.Hello, *later: Request) -> tuple[grpc.StatusCode, str]:
    """Open a stream with `first`, send `later`, read the first snapshot; the stream's status."""
    assert ca.plane.discovery is not None

    async def requests() -> AsyncIterator[Request]:
        yield Request(hello=first)
        for request in later:
            yield request
        await asyncio.sleep(0.2)  # let the control plane read them before the stream ends

    async with grpc.aio.insecure_channel(ca.grpc) as channel:
        call = discovery_pb2_grpc.DiscoveryServiceStub(channel).StreamSnapshots(requests())
        try:
            await call.read()
        except grpc.aio.AioRpcError as exc:
            return exc.code(), str(exc.details())
        call.cancel()
        return grpc.StatusCode.OK, ""


def record(ca: CA, node_id: str) -> Any:
    assert ca.plane.discovery is not None
    return ca.plane.discovery.registry.get(node_id)


def proof_of(issued: Issued, node_id: str, now: datetime) -> discovery_pb2.IdentityProof:
    return identity_proof(issued.presented_pem, issued.key, node_id, now)


def run(tmp_path: Path, body: Any, **options: Any) -> None:
    async def main() -> None:
        async with running_ca(tmp_path / "data", **options) as ca:
            await body(ca)

    asyncio.run(main())


def test_a_proven_hello_registers_the_certificates_identity(tmp_path: Path) -> None:
    async def body(ca: CA) -> None:
        issued = await fetch_certificate(ca.stub, now=ca.clock.now, token=ca.token())
        renewed = await fetch_certificate(ca.stub, now=ca.clock.now, current=issued)
        code, _ = await one_stream(
            ca,
            hello(proof=proof_of(issued, "users-1", ca.clock.now)),
            Request(certificate=proof_of(renewed, "users-1", ca.clock.now)),
        )
        assert code is grpc.StatusCode.OK
        rec = record(ca, "users-1")
        assert rec.registration.identity == str(USERS) and rec.identity_verified
        assert rec.certificate_serial == format(renewed.leaf.serial_number, "x")  # the renewal's
        assert rec.certificate_not_after == renewed.leaf.not_valid_after_utc

    run(tmp_path, body)


def test_a_certificate_for_users_cannot_register_orders(tmp_path: Path) -> None:
    async def body(ca: CA) -> None:
        issued = await fetch_certificate(ca.stub, now=ca.clock.now, token=ca.token())
        proof = proof_of(issued, "orders-1", ca.clock.now)
        code, details = await one_stream(ca, hello("orders-1", "orders", proof=proof))
        assert code is grpc.StatusCode.PERMISSION_DENIED and str(USERS) in details
        assert record(ca, "orders-1") is None

    run(tmp_path, body)


def test_a_proof_for_another_node_or_too_old_is_refused_when_required(tmp_path: Path) -> None:
    async def body(ca: CA) -> None:
        issued = await fetch_certificate(ca.stub, now=ca.clock.now, token=ca.token())
        code, details = await one_stream(ca, hello(proof=proof_of(issued, "users-2", ca.clock.now)))
        assert code is grpc.StatusCode.UNAUTHENTICATED and "signature does not verify" in details
        stale = proof_of(issued, "users-1", ca.clock.now - timedelta(minutes=6))
        code, details = await one_stream(ca, hello(proof=stale))
        assert code is grpc.StatusCode.UNAUTHENTICATED and "unix_time" in details
        code, details = await one_stream(ca, hello())
        assert code is grpc.StatusCode.UNAUTHENTICATED and "requires an identity proof" in details
        assert record(ca, "users-1") is None

    run(tmp_path, body, require_identity=True)


def test_without_require_identity_an_unproven_hello_is_registered_unverified(tmp_path: Path) -> None:
    async def body(ca: CA) -> None:
        other = CertificateAuthority.create("cluster.local", now=datetime.now(UTC))
        key = generate_private_key()
        foreign = other.sign_csr(build_csr(key, ORDERS), ORDERS, timedelta(hours=1), ca.clock.now)
        stranger = Issued(key, (foreign.certificate,), tuple(other.roots), ORDERS, ca.clock.now)
        code, _ = await one_stream(
            ca,
            hello(
                "orders-1", "orders", identity=str(ORDERS), proof=proof_of(stranger, "orders-1", ca.clock.now)
            ),
        )
        assert code is grpc.StatusCode.OK
        rec = record(ca, "orders-1")
        assert rec.registration.identity == str(ORDERS) and not rec.identity_verified
        assert rec.certificate_serial == ""

    run(tmp_path, body)


def test_status_shows_the_proven_certificate(tmp_path: Path) -> None:
    async def body(ca: CA) -> None:
        from control_plane.api_messages import sidecar_status

        issued = await fetch_certificate(ca.stub, now=ca.clock.now, token=ca.token())
        await one_stream(ca, hello(proof=proof_of(issued, "users-1", ca.clock.now)))
        message = sidecar_status(record(ca, "users-1"))
        assert message.identity_verified and message.certificate_serial == format(
            issued.leaf.serial_number, "x"
        )
        assert message.certificate_not_after.ToDatetime(UTC) == issued.leaf.not_valid_after_utc

    run(tmp_path, body)
